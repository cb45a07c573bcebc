// Command laptop is the client node of the tailnet test: a tsnet node (hostname
// "laptop") in its own process, so that it runs with exactly the environment the test
// gives every tailscale component (envknobs are read at process start, which an
// in-process tsnet.Server in the test binary could not guarantee).
//
// It joins the test's control server, prints one JSON line {"event":"up",...} on stdout
// and then reads one JSON command per line on stdin, answering each with one JSON line:
//
//	{"cmd":"forward","target":"100.64.0.1:5432"}
//	    listen on 127.0.0.1:0 and forward every connection to target through the
//	    tailnet; answers {"event":"forwarding","local":"127.0.0.1:N"}. Real psql and
//	    pgbench connect to the local address.
//	{"cmd":"udp","target":"100.64.0.1:9999"}
//	    send a UDP datagram to target through the tailnet and keep the socket open,
//	    so the receiving userspace tailscaled keeps its UDP proxymap entry; answers
//	    {"event":"udp_sent","local":"100.64.0.2:N"}.
//
// Errors are answered as {"event":"error","error":"..."}; logs go to stderr. It exits
// when stdin closes.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"tailscale.com/tsnet"
)

type command struct {
	Cmd    string `json:"cmd"`
	Target string `json:"target"`
}

type reply struct {
	Event string `json:"event"`
	Error string `json:"error,omitempty"`
	Local string `json:"local,omitempty"`
	IPv4  string `json:"ipv4,omitempty"`
	IPv6  string `json:"ipv6,omitempty"`
	Login string `json:"login,omitempty"`
	Name  string `json:"name,omitempty"`
}

var outMu sync.Mutex

func say(r reply) {
	outMu.Lock()
	defer outMu.Unlock()
	b, _ := json.Marshal(r)
	fmt.Fprintf(os.Stdout, "%s\n", b)
}

func main() {
	dir := flag.String("dir", "", "state directory")
	control := flag.String("control", "", "control server URL")
	authkey := flag.String("authkey", "", "auth key")
	hostname := flag.String("hostname", "laptop", "node name")
	flag.Parse()
	if *dir == "" || *control == "" {
		log.Fatal("laptop: -dir and -control are required")
	}
	s := &tsnet.Server{
		Dir:        *dir,
		Hostname:   *hostname,
		ControlURL: *control,
		AuthKey:    *authkey,
		Logf:       log.Printf,
		UserLogf:   log.Printf,
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	st, err := s.Up(ctx)
	cancel()
	if err != nil {
		say(reply{Event: "error", Error: "up: " + err.Error()})
		os.Exit(1)
	}
	ip4, ip6 := s.TailscaleIPs()
	r := reply{Event: "up", IPv4: ip4.String(), IPv6: ip6.String()}
	if st.Self != nil {
		r.Name = st.Self.DNSName
		if u, ok := st.User[st.Self.UserID]; ok {
			r.Login = u.LoginName
		}
	}
	say(r)

	var udpConns []net.Conn // kept open so the peer's proxymap entry stays
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			say(reply{Event: "error", Error: "bad command: " + err.Error()})
			continue
		}
		switch c.Cmd {
		case "forward":
			local, err := forward(s, c.Target)
			if err != nil {
				say(reply{Event: "error", Error: err.Error()})
				continue
			}
			say(reply{Event: "forwarding", Local: local})
		case "udp":
			conn, err := sendUDP(s, c.Target)
			if err != nil {
				say(reply{Event: "error", Error: err.Error()})
				continue
			}
			udpConns = append(udpConns, conn)
			say(reply{Event: "udp_sent", Local: conn.LocalAddr().String()})
		default:
			say(reply{Event: "error", Error: "unknown command " + c.Cmd})
		}
	}
	for _, c := range udpConns {
		c.Close()
	}
}

// awaitPeer waits until the netmap holds a peer with target's address, so the first
// connection through a new forward does not race the netmap.
func awaitPeer(s *tsnet.Server, target string) error {
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		return fmt.Errorf("target %q: %v", target, err)
	}
	lc, err := s.LocalClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := lc.Status(ctx)
		cancel()
		if err == nil {
			for _, p := range st.Peer {
				for _, a := range p.TailscaleIPs {
					if a == ap.Addr() {
						return nil
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no peer with address %s in the netmap after 30s", ap.Addr())
}

func forward(s *tsnet.Server, target string) (string, error) {
	if err := awaitPeer(s, target); err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Printf("laptop: accept on %s: %v", ln.Addr(), err)
				return
			}
			go pipe(s, c, target)
		}
	}()
	return ln.Addr().String(), nil
}

func pipe(s *tsnet.Server, c net.Conn, target string) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	up, err := s.Dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		log.Printf("laptop: dial %s: %v", target, err)
		return
	}
	defer up.Close()
	log.Printf("laptop: %s -> %s via %s", c.RemoteAddr(), target, up.LocalAddr())
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
	go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
}

func sendUDP(s *tsnet.Server, target string) (net.Conn, error) {
	if err := awaitPeer(s, target); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := s.Dial(ctx, "udp", target)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte("waypoint tailnet test datagram")); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}
