package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
)

// waitPing waits until the backend's client answers again after a restart
// (its pool may still hold connections to the killed server).
func waitPing(t *testing.T, b *Streams) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := b.client.Ping(context.Background()).Err()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no PING after the restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisLockOwnAfterRestart is the incident: Redis (with an append-only
// file) is killed in the middle of a trim, so the lock is never released and
// survives the restart with most of its TTL. The next compaction of the same
// process must take its own lock back instead of skipping "held by
// <itself>" until the TTL runs out.
func TestRedisLockOwnAfterRestart(t *testing.T) {
	srv := testutil.StartRedis(t, "--appendonly", "yes", "--appendfsync", "always")
	e := newEnv(t, srv.URL())
	e.addEvents("events", 30000)
	b := e.backend(func(c *Config) {
		c.CommandTimeout = time.Second
		c.LockTTL = 10 * time.Minute
		c.StepEntries = 100
	})
	b.client.AddHook(&killHook{kill: srv.Stop})
	ctx := context.Background()
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100)}}
	if _, err := b.Compact(ctx, opts); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("error %v does not wrap ErrUnavailable", err)
	}
	srv.Restart() // the append-only file brings back the streams and the lock
	waitPing(t, b)
	v, err := e.c.Get(ctx, b.lockKey).Result()
	if err != nil || !strings.HasPrefix(v, "node-a:") {
		t.Fatalf("the interrupted trim's lock did not survive the restart: %q %v", v, err)
	}
	if d, _ := e.c.PTTL(ctx, b.lockKey).Result(); d < time.Minute {
		t.Fatalf("lock TTL %v after the restart, want most of 10m", d)
	}
	rep, err := b.Compact(ctx, opts)
	if err != nil || rep.Skipped != "" || rep.Error != "" {
		t.Fatalf("after the restart: error %v, skipped %q (its own lock blocked it)", err, rep.Skipped)
	}
	if n := e.xlen("events"); n != 100 {
		t.Errorf("%d events left, want 100", n)
	}
	if !hasNote(rep, "took back") {
		t.Errorf("no note says the lock was taken back: %q", rep.Notes)
	}
	if n, _ := e.c.Exists(ctx, b.lockKey).Result(); n != 0 {
		t.Errorf("lock not released after the compaction")
	}
}

// TestRedisLockOwnLeftoverTakenBack: a lock that holds this process's token,
// with no compaction of this process holding it, is taken back at once.
func TestRedisLockOwnLeftoverTakenBack(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	e.addEvents("events", 100)
	b := e.backend(nil)
	if err := e.c.Set(ctx, b.lockKey, b.lockToken(), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil || rep.Skipped != "" || e.xlen("events") != 10 {
		t.Fatalf("error %v, skipped %q, %d left", err, rep.Skipped, e.xlen("events"))
	}
	if !hasNote(rep, "took back") {
		t.Errorf("notes %q", rep.Notes)
	}
	if n, _ := e.c.Exists(ctx, b.lockKey).Result(); n != 0 {
		t.Errorf("lock not released")
	}
	// A lock it took itself is not reported as taken back.
	e.addEvents("events", 5)
	rep, err = b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil || rep.Skipped != "" || hasNote(rep, "took back") {
		t.Errorf("second run: %v skipped %q notes %q", err, rep.Skipped, rep.Notes)
	}
}

// TestRedisLockForeignTokenRespected: a lock of another process is left
// alone, whether it is another node's or an earlier process's of this node.
func TestRedisLockForeignTokenRespected(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	e.addEvents("events", 100)
	b := e.backend(func(c *Config) { c.LockTTL = 2 * time.Hour })
	for _, tc := range []struct{ value, holder string }{
		{"node-a:0123456789abcdef", "node-a"}, // an earlier process of this node
		{"node-b:" + processID, "node-b"},     // another node
		{"node-a", "node-a"},                  // a value without a token
	} {
		if err := e.c.Set(ctx, b.lockKey, tc.value, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
		if err != nil || rep.Error != "" || rep.Skipped != "held by "+tc.holder {
			t.Errorf("%q: error %v, skipped %q, want held by %s", tc.value, err, rep.Skipped, tc.holder)
		}
		if n := e.xlen("events"); n != 100 {
			t.Errorf("%q: trimmed to %d while another holds the lock", tc.value, n)
		}
		if v, _ := e.c.Get(ctx, b.lockKey).Result(); v != tc.value {
			t.Errorf("%q: lock value is now %q", tc.value, v)
		}
		if d, _ := e.c.PTTL(ctx, b.lockKey).Result(); d > time.Hour || d < 50*time.Minute {
			t.Errorf("%q: lock TTL changed to %v", tc.value, d)
		}
	}
}

// TestRedisLockNotTakenFromRunningCompaction: every lock of this process has
// the same value, but one that a running compaction of this process holds (a
// second target on the same streams) is not a leftover: it is respected.
func TestRedisLockNotTakenFromRunningCompaction(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	e.addEvents("events", 100)
	a, b := e.backend(nil), e.backend(nil)
	l, _, err := a.acquire(ctx)
	if err != nil || l == nil {
		t.Fatalf("acquire: %v", err)
	}
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil || rep.Skipped != "held by node-a" || e.xlen("events") != 100 {
		t.Fatalf("while held in this process: %v skipped %q, %d left", err, rep.Skipped, e.xlen("events"))
	}
	if err := l.release(); err != nil {
		t.Fatal(err)
	}
	rep, err = b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil || rep.Skipped != "" || hasNote(rep, "took back") || e.xlen("events") != 10 {
		t.Fatalf("after release: %v skipped %q notes %q, %d left", err, rep.Skipped, rep.Notes, e.xlen("events"))
	}
}

// argsHook records the arguments of every command.
type argsHook struct {
	mu   sync.Mutex
	args [][]any
}

func (h *argsHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *argsHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h *argsHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		h.mu.Lock()
		h.args = append(h.args, cmd.Args())
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

// TestRedisLockTTLInMilliseconds: the lock is set with PX, in milliseconds,
// as docs/formats.md says (go-redis' SetNX sends EX for whole seconds).
func TestRedisLockTTLInMilliseconds(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	b := e.backend(func(c *Config) { c.LockTTL = 30 * time.Second })
	h := &argsHook{}
	b.client.AddHook(h)
	l, _, err := b.acquire(ctx)
	if err != nil || l == nil {
		t.Fatalf("acquire: %v", err)
	}
	defer l.release()
	if d, _ := e.c.PTTL(ctx, b.lockKey).Result(); d <= 29*time.Second || d > 30*time.Second {
		t.Errorf("lock PTTL %v, want in (29s, 30s]", d)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	found := false
	for _, a := range h.args {
		for _, x := range a {
			if x == int64(30000) {
				found = true
			}
			if w, ok := x.(string); ok && strings.EqualFold(fmt.Sprint(a[0]), "set") && strings.EqualFold(w, "ex") {
				t.Errorf("lock set with EX: %v", a)
			}
		}
	}
	if !found {
		t.Errorf("no command carried the TTL as 30000 ms: %v", h.args)
	}
}
