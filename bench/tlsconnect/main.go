// tlsconnect: a connect loop for bench/run.sh's TLS resumption rows (issue 18).
//
// Connects with pgx (sslmode=require), runs one SELECT, closes, and repeats for the
// given time from the given number of goroutines, like pgbench -C -S. With -resume every
// connection shares one tls.ClientSessionCache (the one line docs/tls.md gives for pgx),
// so after the first handshake the client offers its session ticket; without it every
// handshake is full. Prints "connects N seconds S resumed R" on stdout (R counts the
// connections whose tls.ConnectionState says DidResume), and fails on any error.
//
//	tlsconnect -url postgres://... -seconds 5 -clients 1 [-resume]
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	url := flag.String("url", "", "connection URL (sslmode=require)")
	seconds := flag.Float64("seconds", 5, "how long to run")
	clients := flag.Int("clients", 1, "concurrent connect loops")
	resume := flag.Bool("resume", false, "share a ClientSessionCache (resume sessions)")
	flag.Parse()
	cfg, err := pgx.ParseConfig(*url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlsconnect:", err)
		os.Exit(2)
	}
	if cfg.TLSConfig == nil {
		fmt.Fprintln(os.Stderr, "tlsconnect: the URL must ask for TLS (sslmode=require)")
		os.Exit(2)
	}
	if *resume {
		cfg.TLSConfig.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	}
	ctx := context.Background()
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	var n, resumed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && firstErr.Load() == nil {
				c, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				var one int
				err = c.QueryRow(ctx, "SELECT 1").Scan(&one)
				if tc, ok := c.PgConn().Conn().(*tls.Conn); ok && tc.ConnectionState().DidResume {
					resumed.Add(1)
				}
				c.Close(ctx)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		fmt.Fprintln(os.Stderr, "tlsconnect:", e)
		os.Exit(1)
	}
	fmt.Printf("connects %d seconds %.3f resumed %d\n", n.Load(), time.Since(start).Seconds(), resumed.Load())
}
