// Command redisbench measures how the redis backend trims a large stream:
// it fills a stream with Papyra-shaped entries on a private redis-server,
// trims it with the watcher (approximate and exact, in bounded steps) and,
// for comparison, with the single XTRIM Papyra issues, and reports the wall
// time, the entries left and the worst PING latency another client saw
// during the trim.
//
//	go run ./tools/redisbench [-entries 1000000] [-keep 100000] [-addr host:port]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/redis"
)

func main() {
	entries := flag.Int("entries", 1000000, "entries to fill the stream with")
	keep := flag.Int64("keep", 100000, "max_records to trim to")
	addr := flag.String("addr", "", "use this Redis (host:port) instead of starting a private redis-server; its key redisbench:local:events is overwritten")
	flag.Parse()

	if *addr == "" {
		a, stop, err := startRedis()
		if err != nil {
			log.Fatal(err)
		}
		defer stop()
		*addr = a
	}
	c := goredis.NewClient(&goredis.Options{Addr: *addr})
	defer c.Close()
	ctx := context.Background()
	key := "redisbench:local:events"

	fmt.Printf("%d Papyra-shaped entries trimmed to %d, redis at %s\n\n", *entries, *keep, *addr)
	fmt.Printf("%-38s %10s %12s %8s %14s %12s\n", "method", "wall", "entries left", "XTRIMs", "slowest XTRIM", "worst PING")
	run := func(name string, trim func() (int, time.Duration, error)) {
		c.Del(ctx, key)
		if err := fill(ctx, c, key, *entries); err != nil {
			log.Fatal(err)
		}
		stopPing := pinger(*addr)
		start := time.Now()
		calls, slowest, err := trim()
		wall := time.Since(start)
		worst := stopPing()
		if err != nil {
			log.Fatalf("%s: %v", name, err)
		}
		left, _ := c.XLen(ctx, key).Result()
		fmt.Printf("%-38s %10s %12d %8d %14s %12s\n", name, wall.Round(100*time.Microsecond), left, calls,
			slowest.Round(10*time.Microsecond), worst.Round(10*time.Microsecond))
	}

	watcher := func(approx bool) func() (int, time.Duration, error) {
		return func() (int, time.Duration, error) {
			b, err := redis.New(redis.Config{Name: "bench", URL: "redis://" + *addr + "/0",
				Prefix: "redisbench", ApproxTrim: approx, Node: "bench"})
			if err != nil {
				return 0, 0, err
			}
			defer b.Close()
			counter := &xtrimCounter{}
			b.Client().AddHook(counter)
			_, err = b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: keep}})
			return counter.n, counter.slowest, err
		}
	}
	run("watcher, approx_trim=true", watcher(true))
	run("watcher, approx_trim=false", watcher(false))
	single := func(f func() error) func() (int, time.Duration, error) {
		return func() (int, time.Duration, error) {
			t := time.Now()
			err := f()
			return 1, time.Since(t), err
		}
	}
	run("single XTRIM MAXLEN ~ (Papyra)", single(func() error { return c.XTrimMaxLenApprox(ctx, key, *keep, 0).Err() }))
	run("single XTRIM MAXLEN = (Papyra exact)", single(func() error { return c.XTrimMaxLen(ctx, key, *keep).Err() }))
	c.Del(ctx, key)
}

// xtrimCounter counts XTRIM calls and times the slowest.
type xtrimCounter struct {
	mu      sync.Mutex
	n       int
	slowest time.Duration
}

func (h *xtrimCounter) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *xtrimCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h *xtrimCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		t := time.Now()
		err := next(ctx, cmd)
		if cmd.Name() == "xtrim" {
			h.mu.Lock()
			h.n++
			h.slowest = max(h.slowest, time.Since(t))
			h.mu.Unlock()
		}
		return err
	}
}

// pinger PINGs addr in a loop from its own connection until the returned
// function is called, which returns the worst round trip seen.
func pinger(addr string) func() time.Duration {
	c := goredis.NewClient(&goredis.Options{Addr: addr, PoolSize: 1})
	ctx := context.Background()
	c.Ping(ctx)
	stop := make(chan struct{})
	res := make(chan time.Duration)
	go func() {
		var worst time.Duration
		for {
			select {
			case <-stop:
				c.Close()
				res <- worst
				return
			default:
			}
			t := time.Now()
			c.Ping(ctx)
			worst = max(worst, time.Since(t))
		}
	}()
	return func() time.Duration { close(stop); return <-res }
}

var fillScript = goredis.NewScript(`for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'data', string.format(ARGV[2], i, i))
end
return 0`)

// fill appends n entries shaped like Papyra's events (about 190 bytes).
func fill(ctx context.Context, c *goredis.Client, key string, n int) error {
	tmpl := `{"kind": "event", "system_id": "local", "actor_address": "local/worker-%d", "event_type": "ActorStarted", "payload": {"seq": %d, "note": "ok"}, "timestamp": 1795599998.0}`
	for done := 0; done < n; done += 10000 {
		if err := fillScript.Run(ctx, c, []string{key}, min(10000, n-done), tmpl).Err(); err != nil {
			return err
		}
	}
	return nil
}

// startRedis starts a private redis-server on a free port.
func startRedis() (string, func(), error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, fmt.Errorf("redis-server not found (apt-get install redis-server), or pass -addr: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir, err := os.MkdirTemp("", "redisbench-")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", dir, "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	stop := func() { cmd.Process.Kill(); cmd.Wait(); os.RemoveAll(dir) }
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; {
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("redis-server on %s did not start", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, stop, nil
}
