// Package tailnet is Waypoint's test against a real tailnet: an in-process control
// server (testcontrol) with its own DERP and STUN on 127.0.0.1, a real userspace
// tailscaled and tailscale CLI built from the pinned tailscale.com module, a tsnet client
// node ("laptop", its own process), the real waypoint binary and a real PostgreSQL
// cluster, driven with real psql and pgbench. Test infrastructure only: the product
// stays C.
//
// This file is the harness: building the tailscale binaries, the environment every
// tailscale component runs with (loopback only, nothing under /var/lib/tailscale), the
// proxy that fails the test if anything tries to leave the machine, and the processes.
// tailnet_test.go holds the checks.
package tailnet

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// srcDir and binDir locate the Waypoint checkout and its build directory (ctest passes
// both; `go test` from test/tailnet falls back to the in-tree build/).
func srcDir() string {
	if d := os.Getenv("WP_SOURCE_DIR"); d != "" {
		return d
	}
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

func buildDir() string {
	if d := os.Getenv("WP_BINARY_DIR"); d != "" {
		return d
	}
	return filepath.Join(srcDir(), "build")
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// buildTools builds tailscaled, tailscale and the laptop node into dir. The go build
// cache makes this a relink on warm runs; the module versions are the ones go.mod pins.
func buildTools(t *testing.T, dir string) {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(goTool(), "build", "-buildvcs=false", "-o", dir+"/",
		"tailscale.com/cmd/tailscaled", "tailscale.com/cmd/tailscale", "./laptop")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("building the tailscale binaries: %v\n%s", err, out)
	}
	t.Logf("built tailscaled, tailscale, laptop in %v", time.Since(start).Round(time.Millisecond))
}

// ---- the proxy that keeps everything on the machine ------------------------------

// leakTrap is the HTTP(S)_PROXY of every tailscale component. Go never proxies loopback
// destinations, so anything that arrives here wanted to leave the machine: the test
// fails, naming it. It answers 403 so nothing waits on it.
type leakTrap struct {
	mu     sync.Mutex
	leaks  []string
	server *httptest.Server
}

func newLeakTrap() *leakTrap {
	lt := &leakTrap{}
	lt.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := r.Host
		if r.Method != http.MethodConnect && r.URL.Host != "" {
			target = r.URL.Host
		}
		if !isLoopbackTarget(target) {
			lt.mu.Lock()
			lt.leaks = append(lt.leaks, r.Method+" "+target+" "+r.URL.String())
			lt.mu.Unlock()
		}
		http.Error(w, "the tailnet test allows no traffic off this machine", http.StatusForbidden)
	}))
	return lt
}

func isLoopbackTarget(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (lt *leakTrap) Leaks() []string {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return append([]string(nil), lt.leaks...)
}

// ---- environment ------------------------------------------------------------------

// tsEnv is the environment of a tailscale component called name: the process
// environment without proxy settings of its own, plus the loopback-only knobs, its own
// log dir and HOME inside the test's temp dir.
func tsEnv(root, name, proxyURL string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k := strings.ToUpper(strings.SplitN(kv, "=", 2)[0])
		switch k {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "HOME", "XDG_CONFIG_HOME",
			"XDG_CACHE_HOME", "XDG_STATE_HOME":
			continue
		}
		env = append(env, kv)
	}
	logs := filepath.Join(root, "tslogs", name)
	home := filepath.Join(root, "home", name)
	os.MkdirAll(logs, 0o755)
	os.MkdirAll(home, 0o755)
	return append(env,
		"TS_DEBUG_OMIT_LOCAL_ADDRS=1",
		"TS_DISABLE_PORTMAPPER=1",
		"TS_NO_LOGS_NO_SUPPORT=1",
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_LOGS_DIR="+logs,
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"HTTP_PROXY="+proxyURL, "HTTPS_PROXY="+proxyURL,
		"http_proxy="+proxyURL, "https_proxy="+proxyURL,
	)
}

// varLibTailscale describes /var/lib/tailscale (the default state dir) so the test can
// prove nothing was written there.
func varLibTailscale() string {
	var b strings.Builder
	filepath.Walk("/var/lib/tailscale", func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		fmt.Fprintf(&b, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	return b.String()
}

// ---- processes ----------------------------------------------------------------------

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts a child that dies with the test (Pdeathsig) and logs to root/NAME.log.
func startProc(t *testing.T, root, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(root, name+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Env = env
	p.cmd.Stdout = f
	p.cmd.Stderr = f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	f.Close()
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) kill() {
	if p.exited() {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// tail gives the last n lines of the log, for failure messages.
func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.logText(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("---- %s (%s) ----\n%s", p.name, p.log, strings.Join(lines, "\n"))
}

// waitFor polls cond every 50 ms until it returns nil or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func run(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ---- the laptop node ----------------------------------------------------------------

type laptopReply struct {
	Event string `json:"event"`
	Error string `json:"error"`
	Local string `json:"local"`
	IPv4  string `json:"ipv4"`
	IPv6  string `json:"ipv6"`
	Login string `json:"login"`
	Name  string `json:"name"`
}

type laptop struct {
	*proc
	in      io.WriteCloser
	replies chan laptopReply
	up      laptopReply
}

func startLaptop(t *testing.T, root, bin string, env []string, controlURL, authKey string) *laptop {
	t.Helper()
	logPath := filepath.Join(root, "laptop.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	l := &laptop{proc: &proc{name: "laptop", log: logPath, done: make(chan struct{})},
		replies: make(chan laptopReply, 16)}
	cmd := exec.Command(filepath.Join(bin, "laptop"), "-dir", filepath.Join(root, "laptop-state"),
		"-control", controlURL, "-authkey", authKey, "-hostname", "laptop")
	cmd.Env = env
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if l.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	l.cmd = cmd
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting laptop: %v", err)
	}
	f.Close()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r laptopReply
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				l.replies <- r
			}
		}
		close(l.replies)
		l.err = cmd.Wait()
		close(l.done)
	}()
	t.Cleanup(func() { l.in.Close(); l.kill() })
	l.up = l.next(t, 90*time.Second)
	if l.up.Event != "up" {
		t.Fatalf("laptop did not come up: %+v\n%s", l.up, l.tail(40))
	}
	return l
}

func (l *laptop) next(t *testing.T, d time.Duration) laptopReply {
	t.Helper()
	select {
	case r, ok := <-l.replies:
		if !ok {
			t.Fatalf("laptop exited\n%s", l.tail(40))
		}
		return r
	case <-time.After(d):
		t.Fatalf("laptop did not answer within %v\n%s", d, l.tail(40))
	}
	return laptopReply{}
}

// do sends one command and returns the reply, failing the test on an error reply.
func (l *laptop) do(t *testing.T, cmd, target string) laptopReply {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"cmd": cmd, "target": target})
	if _, err := l.in.Write(append(b, '\n')); err != nil {
		t.Fatalf("laptop %s: %v", cmd, err)
	}
	r := l.next(t, 60*time.Second)
	if r.Event == "error" {
		t.Fatalf("laptop %s %s: %s\n%s", cmd, target, r.Error, l.tail(40))
	}
	return r
}

// ---- psql as a long-lived session ----------------------------------------------------

// psqlSession is one psql process reading commands from a pipe: an open session whose
// fate across grant changes the test watches. Each exec ends with an \echo marker, so
// the output of one command is everything before it (psql flushes after each).
type psqlSession struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	n     int
}

func startPsql(t *testing.T, conninfo string) *psqlSession {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-qAt", "-v", "VERBOSITY=verbose", conninfo)
	cmd.Env = append(os.Environ(), "PGAPPNAME=tailnet-open-session")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	s := &psqlSession{cmd: cmd, lines: make(chan string, 256)}
	if s.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() { s.in.Close(); cmd.Process.Kill(); cmd.Wait() })
	return s
}

// exec runs sql and returns its output (stdout and stderr), or ok=false if psql ended
// before the marker (the output then holds what it printed).
func (s *psqlSession) exec(t *testing.T, sql string) (out string, ok bool) {
	t.Helper()
	s.n++
	marker := fmt.Sprintf("__tailnet_done_%d__", s.n)
	fmt.Fprintf(s.in, "%s\n\\echo %s\n", sql, marker)
	var b strings.Builder
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, open := <-s.lines:
			if !open {
				return b.String(), false
			}
			if line == marker {
				return b.String(), true
			}
			b.WriteString(line + "\n")
		case <-timeout:
			t.Fatalf("psql did not finish %q within 30s; got %q", sql, b.String())
		}
	}
}
