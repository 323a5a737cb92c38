package triggers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testlog"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
)

// redisFakeInfo serves INFO memory texts per server address.
type redisFakeInfo struct {
	mu    sync.Mutex
	ratio map[string]float64 // addr → used/maxmemory; missing = unreachable
	text  map[string]string  // addr → raw text, overrides ratio
	calls map[string]int
}

func newRedisFakeInfo() *redisFakeInfo {
	return &redisFakeInfo{ratio: map[string]float64{}, text: map[string]string{}, calls: map[string]int{}}
}

func (f *redisFakeInfo) set(addr string, ratio float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ratio[addr] = ratio
	delete(f.text, addr)
}

func (f *redisFakeInfo) down(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ratio, addr)
	delete(f.text, addr)
}

func (f *redisFakeInfo) info(ctx context.Context, url string) (string, error) {
	addr, err := RedisServerAddr(url)
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[addr]++
	if t, ok := f.text[addr]; ok {
		return t, nil
	}
	r, ok := f.ratio[addr]
	if !ok {
		return "", fmt.Errorf("dial tcp %s: connect: connection refused", addr)
	}
	return fmt.Sprintf("# Memory\r\nused_memory:%d\r\nused_memory_human:1M\r\nmaxmemory:1000000\r\ntotal_system_memory:8000000000\r\n", int64(r*1000000)), nil
}

// redisSignalLog collects emitted signals.
type redisSignalLog struct {
	mu   sync.Mutex
	sigs []policy.Signal
}

func (l *redisSignalLog) emit(s policy.Signal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sigs = append(l.sigs, s)
}

func (l *redisSignalLog) take() []policy.Signal {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sigs
	l.sigs = nil
	return s
}

func redisMemTarget(name, url string, high, low float64) Target {
	return Target{Name: name, Backend: backends.KindRedis, RedisURL: url,
		RedisMemory: RedisMemorySettings{Interval: 10 * time.Second, HighPercent: high, LowPercent: low}}
}

func TestRedisMemoryHysteresisAndGrouping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRedisFakeInfo()
		f.set("h1:6379", 0.5)
		f.set("h2:6380", 0.1)
		targets := []Target{
			redisMemTarget("a", "redis://h1/0", 80, 70),
			redisMemTarget("b", "redis://:pw@h1:6379/3", 80, 70),
			redisMemTarget("c", "redis://h2:6380", 80, 70),
			{Name: "file", Backend: backends.KindJSON, Files: []string{"/x"}},
		}
		m := NewRedisMemory(targets, slog.New(slog.DiscardHandler), RedisMemoryOptions{Info: f.info})
		var log redisSignalLog
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- m.Run(ctx, log.emit) }()

		step := func(ratio float64, wantSignal bool) {
			t.Helper()
			f.set("h1:6379", ratio)
			time.Sleep(10 * time.Second)
			synctest.Wait()
			sigs := log.take()
			if !wantSignal {
				if len(sigs) != 0 {
					t.Fatalf("ratio %v: unexpected signals %+v", ratio, sigs)
				}
				return
			}
			if len(sigs) != 1 {
				t.Fatalf("ratio %v: %d signals, want 1: %+v", ratio, len(sigs), sigs)
			}
			s := sigs[0]
			if s.Kind != policy.KindRedisMemory || !s.Urgent || !slices.Equal(s.Targets, []string{"a", "b"}) ||
				!strings.Contains(s.Reason, "h1:6379") || s.At.IsZero() {
				t.Fatalf("ratio %v: signal %+v", ratio, s)
			}
		}
		synctest.Wait()
		if sigs := log.take(); len(sigs) != 0 {
			t.Fatalf("at start: %+v", sigs)
		}
		step(0.85, true)  // pressure
		step(0.75, true)  // still above low: keeps signalling
		step(0.70, true)  // at low: still under pressure
		step(0.69, false) // below low: re-armed
		step(0.79, false) // below high
		step(0.80, true)  // at high
		step(0.10, false)

		// One INFO per server per reading, however many targets share it.
		f.mu.Lock()
		c1, c2 := f.calls["h1:6379"], f.calls["h2:6380"]
		f.mu.Unlock()
		if c1 != 8 || c2 != 8 {
			t.Errorf("INFO calls: h1 %d, h2 %d; want 8 each", c1, c2)
		}
		if r := m.Ratios(); r["a"] != 0.1 || r["b"] != 0.1 || r["c"] != 0.1 || len(r) != 3 {
			t.Errorf("ratios %v", r)
		}
		st := m.State()
		if len(st) != 2 || st[0].Addr != "h1:6379" || !slices.Equal(st[0].Targets, []string{"a", "b"}) ||
			!st[0].Connected || st[0].UnderPressure || st[1].Addr != "h2:6380" {
			t.Errorf("state %+v", st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestRedisMemoryPerTargetThresholds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRedisFakeInfo()
		f.set("h1:6379", 0.65)
		m := NewRedisMemory([]Target{
			redisMemTarget("low", "redis://h1/0", 60, 50),
			redisMemTarget("default", "redis://h1/1", 0, 0), // 80/70
		}, nil, RedisMemoryOptions{Info: f.info})
		var log redisSignalLog
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go m.Run(ctx, log.emit)
		synctest.Wait()
		sigs := log.take()
		if len(sigs) != 1 || !slices.Equal(sigs[0].Targets, []string{"low"}) {
			t.Fatalf("signals %+v", sigs)
		}
		f.set("h1:6379", 0.9)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if sigs := log.take(); len(sigs) != 1 || !slices.Equal(sigs[0].Targets, []string{"low", "default"}) {
			t.Fatalf("signals %+v", sigs)
		}
	})
}

func TestRedisMemoryUnreachableLogsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRedisFakeInfo()
		f.set("h1:6379", 0.9)
		var buf testlog.Buffer
		m := NewRedisMemory([]Target{redisMemTarget("a", "redis://u:topsecret@h1/0", 80, 70)},
			slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), RedisMemoryOptions{Info: f.info})
		var log redisSignalLog
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go m.Run(ctx, log.emit)
		synctest.Wait()
		if n := len(log.take()); n != 1 {
			t.Fatalf("%d signals, want 1", n)
		}
		f.down("h1:6379")
		for range 5 {
			time.Sleep(10 * time.Second)
			synctest.Wait()
		}
		if n := len(log.take()); n != 0 {
			t.Errorf("%d signals while unreachable", n)
		}
		if n := buf.Count("unreachable"); n != 1 {
			t.Errorf("unreachable logged %d times, want 1", n)
		}
		st := m.State()
		if st[0].Connected || !strings.Contains(st[0].Err, "connection refused") || !st[0].UnderPressure {
			t.Errorf("state while down: %+v", st)
		}
		if len(m.Ratios()) != 0 {
			t.Errorf("ratios while down: %v", m.Ratios())
		}
		// Retried every interval.
		f.mu.Lock()
		calls := f.calls["h1:6379"]
		f.mu.Unlock()
		if calls != 6 {
			t.Errorf("%d INFO calls, want 6", calls)
		}
		f.set("h1:6379", 0.75) // back, still above low: pressure continues
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := len(log.take()); n != 1 {
			t.Errorf("%d signals after reconnect, want 1", n)
		}
		f.set("h1:6379", 0.5)
		for range 3 {
			time.Sleep(10 * time.Second)
			synctest.Wait()
		}
		if n := buf.Count("reachable again"); n != 1 {
			t.Errorf("reconnect logged %d times, want 1", n)
		}
		if buf.Count("topsecret") != 0 {
			t.Errorf("log leaks the password: %s", buf.String())
		}
		// A reply that cannot be read: logged once, connected but erroring.
		f.mu.Lock()
		f.text["h1:6379"] = "# Memory\r\nused_memory:abc\r\nmaxmemory:0\r\n"
		f.mu.Unlock()
		for range 3 {
			time.Sleep(10 * time.Second)
			synctest.Wait()
		}
		if n := buf.Count("cannot be read"); n != 1 {
			t.Errorf("invalid INFO logged %d times, want 1", n)
		}
		if st := m.State(); !st[0].Connected || !strings.Contains(st[0].Err, "used_memory") {
			t.Errorf("state %+v", st)
		}
	})
}

func TestRedisMemorySetTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newRedisFakeInfo()
		f.set("h1:6379", 0.9)
		f.set("h2:6379", 0.9)
		m := NewRedisMemory([]Target{redisMemTarget("a", "redis://h1", 80, 70)}, nil, RedisMemoryOptions{Info: f.info})
		var log redisSignalLog
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { m.Run(ctx, log.emit); close(done) }()
		synctest.Wait()
		log.take()
		m.SetTargets([]Target{redisMemTarget("b", "redis://h2", 80, 70), redisMemTarget("bad", "http://x", 80, 70)})
		synctest.Wait()
		sigs := log.take()
		if len(sigs) != 1 || !slices.Equal(sigs[0].Targets, []string{"b"}) {
			t.Fatalf("after reload: %+v", sigs)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		f.mu.Lock()
		c1 := f.calls["h1:6379"]
		f.mu.Unlock()
		if c1 != 1 {
			t.Errorf("removed server still polled: %d calls", c1)
		}
		if st := m.State(); len(st) != 1 || st[0].Addr != "h2:6379" {
			t.Errorf("state %+v", st)
		}
		cancel()
		<-done
	})
}

func TestParseRedisMemoryInfo(t *testing.T) {
	for _, c := range []struct {
		text string
		want float64
		err  string
	}{
		{"# Memory\r\nused_memory:500\r\nmaxmemory:1000\r\n", 0.5, ""},
		{"used_memory:250\nmaxmemory:0\ntotal_system_memory:1000\n", 0.25, ""},
		{"# Memory\r\nused_memory:500\r\n", 0, "maxmemory missing"},
		{"maxmemory:1000\r\n", 0, "used_memory missing"},
		{"used_memory:-5\r\nmaxmemory:1000\r\n", 0, "used_memory is not a byte count"},
		{"used_memory:5\r\nmaxmemory:10k\r\n", 0, "maxmemory is not a byte count"},
		{"used_memory:5\r\nmaxmemory:0\r\n", 0, "total_system_memory missing"},
		{"used_memory:5\r\nmaxmemory:0\r\ntotal_system_memory:0\r\n", 0, "both 0"},
		{"", 0, "used_memory missing"},
		{"garbage without colon\n\x00\xff", 0, "used_memory missing"},
	} {
		got, err := ParseRedisMemoryInfo(c.text)
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("%q: %v %v, want %v", c.text, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrRedisInfo) {
			t.Errorf("%q: error %v, want one containing %q", c.text, err, c.err)
		}
	}
}

func TestRedisServerAddr(t *testing.T) {
	for in, want := range map[string]string{
		"redis://h":                 "h:6379",
		"redis://u:p@h:7000/2":      "h:7000",
		"rediss://127.0.0.1:6380/0": "127.0.0.1:6380",
	} {
		if got, err := RedisServerAddr(in); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	if _, err := RedisServerAddr("redis://u:sekrit@h:notaport/0"); err == nil || strings.Contains(err.Error(), "sekrit") {
		t.Errorf("bad url: %v", err)
	}
}

// TestRedisMemoryRealServer fills a private redis-server with a small
// maxmemory until it is under pressure, and waits for the signal.
func TestRedisMemoryRealServer(t *testing.T) {
	srv := testutil.StartRedis(t, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ctx := context.Background()
	m := NewRedisMemory([]Target{{
		Name: "r", Backend: backends.KindRedis, RedisURL: srv.URL(),
		RedisMemory: RedisMemorySettings{Interval: 50 * time.Millisecond, HighPercent: 80, LowPercent: 70},
	}}, nil)
	sigs := make(chan policy.Signal, 100)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		m.Run(rctx, func(s policy.Signal) {
			select {
			case sigs <- s:
			default:
			}
		})
		close(done)
	}()
	defer func() { cancel(); <-done }()

	// Wait for the first reading: no pressure yet.
	deadline := time.Now().Add(10 * time.Second)
	for len(m.Ratios()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no reading: %+v", m.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := m.Ratios()["r"]; r <= 0 || r >= 0.8 {
		t.Fatalf("initial ratio %v", r)
	}
	payload := strings.Repeat("x", 1000)
	for i := 0; ; i++ {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			t.Fatal(err)
		}
		if r, _ := ParseRedisMemoryInfo(info); r >= 0.85 {
			break
		}
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: "papyra:local:events", Values: []any{"data", payload}}).Err(); err != nil {
			t.Fatalf("fill (entry %d): %v", i, err)
		}
	}
	select {
	case s := <-sigs:
		if s.Kind != policy.KindRedisMemory || !s.Urgent || !slices.Equal(s.Targets, []string{"r"}) {
			t.Errorf("signal %+v", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no signal under pressure: %+v", m.State())
	}
	st := m.State()
	if len(st) != 1 || !st[0].Connected || !st[0].UnderPressure || st[0].Ratio < 0.8 || st[0].Addr != srv.Addr() {
		t.Errorf("state %+v", st)
	}

	// The server goes away: state says so; it comes back: readings resume.
	srv.Stop()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if st := m.State(); !st[0].Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("down not noticed: %+v", m.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Restart()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if st := m.State(); st[0].Connected && st[0].Ratio < 0.7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconnect not noticed: %+v", m.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
