package testutil

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SharedRedisAddr is the address of the Redis every developer machine and CI
// job runs.
const SharedRedisAddr = "127.0.0.1:6379"

// inCI reports whether the tests run in CI, where a missing dependency must
// fail loudly instead of skipping.
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "0" && v != "false"
}

// missing skips the test, or fails it in CI, because a dependency is absent.
func missing(t testing.TB, msg string) {
	t.Helper()
	if inCI() {
		t.Fatal(msg + " (CI is set, so this is an error)")
	}
	t.Skip(msg)
}

// RedisServer is a private redis-server process on a free port of 127.0.0.1,
// without persistence, stopped when the test ends.
type RedisServer struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis starts a private redis-server with the extra config args (for
// example "--maxmemory", "2mb") and waits until it answers PING. It skips the
// test when redis-server is not on PATH (fails when CI is set).
func StartRedis(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server not found: apt-get install redis-server")
	}
	s := &RedisServer{t: t, bin: bin, dir: t.TempDir(), port: freePort(t), args: args}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *RedisServer) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	argv := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning",
	}
	argv = append(argv, s.args...)
	cmd := exec.Command(s.bin, argv...)
	logf, err := os.OpenFile(s.dir+"/redis.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("redis log: %v", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		s.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ping(s.Addr(), 200*time.Millisecond) == nil {
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(s.dir + "/redis.log")
			s.cmd = nil
			s.t.Fatalf("redis-server on port %d exited at start: %s", s.port, log)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d did not answer PING within 10s", s.port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is the server's host:port.
func (s *RedisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is redis://host:port/0.
func (s *RedisServer) URL() string { return "redis://" + s.Addr() + "/0" }

// Stop kills the server (SIGKILL, as a crash would) and waits until it has
// exited. Stopping a stopped server does nothing.
func (s *RedisServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// Restart stops the server if it runs and starts it again on the same port.
// Data is not persisted: the restarted server is empty.
func (s *RedisServer) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// ping sends PING over a raw connection and expects +PONG.
func ping(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	// A server that wants AUTH is up too.
	if l := strings.TrimSpace(line); l != "+PONG" && !strings.HasPrefix(l, "-NOAUTH") {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// SharedRedis returns the URL of the shared Redis on 127.0.0.1:6379 after
// checking that it answers PING. Where it does not, outside CI, the test gets
// a private redis-server instead (skipped when redis-server is not
// installed); in CI, where .ci/run starts the shared one, that is an error.
// Tests must use a UniquePrefix and never flush it.
func SharedRedis(t testing.TB) string {
	t.Helper()
	if err := ping(SharedRedisAddr, 2*time.Second); err != nil {
		if inCI() {
			t.Fatalf("no redis on %s (%v): CI must run one (.ci/run starts it)", SharedRedisAddr, err)
		}
		t.Logf("no redis on %s (%v): using a private redis-server", SharedRedisAddr, err)
		return StartRedis(t).URL()
	}
	return "redis://" + SharedRedisAddr + "/0"
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// UniquePrefix returns a key prefix no other test (or run) uses, derived from
// the test's name. When url is not empty, every key under the prefix on that
// server is deleted when the test ends.
func UniquePrefix(t testing.TB, url string) string {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := unsafeChars.ReplaceAllString(t.Name(), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	prefix := "wtest-" + name + "-" + hex.EncodeToString(rnd[:])
	if url != "" {
		t.Cleanup(func() { DeletePrefix(url, prefix) })
	}
	return prefix
}

// DeletePrefix deletes every key starting with prefix+":" on the server at
// url, with SCAN and UNLINK. Errors are ignored: it is cleanup.
func DeletePrefix(url, prefix string) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	it := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	var keys []string
	for it.Next(ctx) {
		keys = append(keys, it.Val())
	}
	if len(keys) > 0 {
		c.Unlink(ctx, keys...)
	}
}
