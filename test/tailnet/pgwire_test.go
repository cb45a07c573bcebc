package tailnet

// A minimal PostgreSQL startup exchange, for the checks that need what psql cannot do:
// read the exact SQLSTATE of a refused connect, and connect from a chosen local port.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// startupResult is how Waypoint answered a StartupMessage.
type startupResult struct {
	Accepted bool   // AuthenticationOk arrived
	SQLState string // of the ErrorResponse, when refused
	Message  string
}

func (r startupResult) String() string {
	if r.Accepted {
		return "accepted"
	}
	return fmt.Sprintf("refused %s: %s", r.SQLState, r.Message)
}

// pgStartup dials addr (from local, when non-nil), sends a protocol 3.0 StartupMessage
// for database appdb and reads until AuthenticationOk or an ErrorResponse.
func pgStartup(addr string, local *net.TCPAddr, timeout time.Duration) (startupResult, error) {
	d := net.Dialer{Timeout: timeout}
	if local != nil {
		d.LocalAddr = local
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return startupResult{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))

	var body []byte
	body = binary.BigEndian.AppendUint32(body, 3<<16)
	for _, kv := range [][2]string{{"user", "ignored"}, {"database", "appdb"}} {
		body = append(append(body, kv[0]...), 0)
		body = append(append(body, kv[1]...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	if _, err := c.Write(append(msg, body...)); err != nil {
		return startupResult{}, err
	}

	r := bufio.NewReader(c)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return startupResult{}, fmt.Errorf("reading answer: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > 1<<20 {
			return startupResult{}, fmt.Errorf("bad message length %d", n)
		}
		payload := make([]byte, n-4)
		if _, err := io.ReadFull(r, payload); err != nil {
			return startupResult{}, fmt.Errorf("reading message: %w", err)
		}
		switch hdr[0] {
		case 'R':
			if len(payload) >= 4 && binary.BigEndian.Uint32(payload) == 0 {
				c.Write([]byte{'X', 0, 0, 0, 4}) // Terminate
				return startupResult{Accepted: true}, nil
			}
			return startupResult{}, fmt.Errorf("unexpected authentication request %x", payload)
		case 'E':
			res := startupResult{}
			for len(payload) > 1 {
				code := payload[0]
				end := 1
				for end < len(payload) && payload[end] != 0 {
					end++
				}
				val := string(payload[1:end])
				switch code {
				case 'C':
					res.SQLState = val
				case 'M':
					res.Message = val
				}
				if end >= len(payload) {
					break
				}
				payload = payload[end+1:]
			}
			return res, nil
		case 'N', 'S':
			continue // notices and parameters before the answer
		default:
			return startupResult{}, fmt.Errorf("unexpected message %q", hdr[0])
		}
	}
}
