package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
)

// fixedNow is the instant the tests evaluate age limits at.
var fixedNow = time.Unix(1795600000, 0)

// papyraEvent is a record as Papyra writes it, with its timestamp.
func papyraEvent(ts float64, i int) string {
	return fmt.Sprintf(`{"kind": "event", "system_id": "local", "actor_address": "local/actor-%d", "event_type": "ActorStarted", "payload": {"n": %d, "note": "some payload text to reach papyra-like size"}, "timestamp": %.3f}`, i%50, i, ts)
}

type redisEnv struct {
	t      *testing.T
	url    string
	prefix string
	c      *goredis.Client
}

func (e *redisEnv) key(s string) string { return e.prefix + ":local:" + s }

func newEnv(t *testing.T, url string) *redisEnv {
	t.Helper()
	opts, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return &redisEnv{t: t, url: url, prefix: testutil.UniquePrefix(t, url), c: c}
}

func sharedEnv(t *testing.T) *redisEnv { return newEnv(t, testutil.SharedRedis(t)) }

// backend returns a Redis backend on the env's prefix.
func (e *redisEnv) backend(mod func(*Config)) *Streams {
	e.t.Helper()
	cfg := Config{Name: "r", URL: e.url, Prefix: e.prefix, ApproxTrim: false, Node: "node-a", CommandTimeout: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { b.Close() })
	return b
}

// addEvents appends n events as Papyra does (XADD key * data <json>), in
// pipelined batches, with server-assigned ids.
func (e *redisEnv) addEvents(stream string, n int) {
	e.t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i += 1000 {
		p := e.c.Pipeline()
		for j := i; j < min(n, i+1000); j++ {
			p.XAdd(ctx, &goredis.XAddArgs{Stream: e.key(stream), Values: []any{"data", papyraEvent(float64(fixedNow.Unix()), j)}})
		}
		if _, err := p.Exec(ctx); err != nil {
			e.t.Fatal(err)
		}
	}
}

// addAt appends one entry with an explicit id at Unix second sec (the id is
// the write time in ms), as if Papyra had written it then.
func (e *redisEnv) addAt(stream string, sec float64, seq int) string {
	e.t.Helper()
	id := fmt.Sprintf("%d-%d", int64(sec*1000), seq)
	got, err := e.c.XAdd(context.Background(), &goredis.XAddArgs{Stream: e.key(stream), ID: id, Values: []any{"data", papyraEvent(sec, seq)}}).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

func (e *redisEnv) xlen(stream string) int64 {
	e.t.Helper()
	n, err := e.c.XLen(context.Background(), e.key(stream)).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *redisEnv) ids(stream string) []string {
	e.t.Helper()
	msgs, err := e.c.XRange(context.Background(), e.key(stream), "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

func i64(v int64) *int64     { return &v }
func f64(v float64) *float64 { return &v }
func hasNote(r backends.Report, s string) bool {
	for _, n := range r.Notes {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

func TestRedisCountExact(t *testing.T) {
	e := sharedEnv(t)
	e.addEvents("events", 1000)
	e.addEvents("audits", 50)
	b := e.backend(nil)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.xlen("events"); got != 100 {
		t.Errorf("events: %d entries left, want 100", got)
	}
	if got := e.xlen("audits"); got != 50 {
		t.Errorf("audits: %d entries left, want 50", got)
	}
	if rep.BeforeRecords != 1050 || rep.AfterRecords != 150 || rep.RemovedRecords != 900 || rep.Dropped.Count != 900 {
		t.Errorf("report: before %d after %d removed %d dropped.count %d, want 1050 150 900 900",
			rep.BeforeRecords, rep.AfterRecords, rep.RemovedRecords, rep.Dropped.Count)
	}
	if rep.Backend != backends.KindRedis || rep.Target != "r" || rep.Node != "node-a" || rep.Skipped != "" || rep.Error != "" {
		t.Errorf("report header: %+v", rep)
	}
	if rep.BeforeBytes == nil || rep.AfterBytes == nil || *rep.AfterBytes >= *rep.BeforeBytes || rep.ReclaimedBytes == nil {
		t.Errorf("bytes: before %v after %v", rep.BeforeBytes, rep.AfterBytes)
	}
	// The newest entries are the ones kept.
	msgs, _ := e.c.XRevRangeN(context.Background(), e.key("events"), "+", "-", 1).Result()
	if d := msgs[0].Values["data"].(string); !strings.Contains(d, `"n": 999,`) {
		t.Errorf("newest entry lost: %s", d)
	}
	if n, _ := e.c.Exists(context.Background(), b.lockKey).Result(); n != 0 {
		t.Errorf("lock %s not released", b.lockKey)
	}
}

func TestRedisCountApprox(t *testing.T) {
	e := sharedEnv(t)
	e.addEvents("events", 3000)
	b := e.backend(func(c *Config) { c.ApproxTrim = true })
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	node := b.nodeMaxEntries(context.Background())
	got := e.xlen("events")
	if got < 100 || got > 100+node {
		t.Errorf("events: %d entries left, want 100..%d (within one node)", got, 100+node)
	}
	// A note says how many entries the approximate trim left over the
	// limit, exactly when it left some.
	want := fmt.Sprintf("approximate trim left %d entries over max_records on %s", got-100, e.key("events"))
	if got > 100 && !hasNote(rep, want) {
		t.Errorf("%d entries left over the limit, no note %q: %q", got-100, want, rep.Notes)
	}
	if got == 100 && hasNote(rep, "approximate trim") {
		t.Errorf("nothing left over the limit, but a note: %q", rep.Notes)
	}
}

// noteWith returns the first note of r containing s, or "".
func noteWith(r backends.Report, s string) string {
	for _, n := range r.Notes {
		if strings.Contains(n, s) {
			return n
		}
	}
	return ""
}

// TestRedisApproxTrimSmallStreamSaysWhy: an approximate trim of a small
// stream removes nothing (Redis removes whole stream nodes only), and the
// report says how many entries it left over the limit, why, and what to
// do; an exact trim meets the limit and says nothing of the kind.
func TestRedisApproxTrimSmallStreamSaysWhy(t *testing.T) {
	for _, approx := range []bool{true, false} {
		t.Run(fmt.Sprintf("approx=%v", approx), func(t *testing.T) {
			e := sharedEnv(t)
			e.addEvents("events", 20)
			b := e.backend(func(c *Config) { c.ApproxTrim = approx })
			rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(5)}, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			got := e.xlen("events")
			if !approx {
				if got != 5 || hasNote(rep, "approximate trim") {
					t.Errorf("exact trim: %d left, notes %q; want 5 and no note", got, rep.Notes)
				}
				return
			}
			if got <= 5 {
				t.Skipf("the server's stream nodes are small enough that an approximate trim left %d", got)
			}
			n := noteWith(rep, "approximate trim")
			for _, want := range []string{
				fmt.Sprintf("approximate trim left %d entries over max_records on %s", got-5, e.key("events")),
				"Redis trims whole stream nodes only (stream-node-max-entries = ",
				"stream-node-max-bytes = ",
				"set approx_trim = false for an exact trim",
			} {
				if !strings.Contains(n, want) {
					t.Errorf("note %q lacks %q (all notes: %q)", n, want, rep.Notes)
				}
			}
			if rep.AfterRecords != got || rep.RemovedRecords != 20-got {
				t.Errorf("report: after %d removed %d, want %d and %d", rep.AfterRecords, rep.RemovedRecords, got, 20-got)
			}
		})
	}
}

// TestRedisApproxTrimAgeAndGroupsSaysWhy: the same note for what an
// approximate MINID trim leaves older than max_age_seconds, with and
// without a consumer group (whose hold turns every trim into a MINID).
func TestRedisApproxTrimAgeAndGroupsSaysWhy(t *testing.T) {
	for _, group := range []bool{false, true} {
		t.Run(fmt.Sprintf("group=%v", group), func(t *testing.T) {
			e := sharedEnv(t)
			ctx := context.Background()
			now := float64(fixedNow.Unix())
			for i := range 20 {
				e.addAt("events", now-200+float64(i), 0) // 10 older than 190 s
			}
			if group {
				// A group that has read and acknowledged everything: it
				// holds nothing back, but the trims go through MINID.
				if err := e.c.XGroupCreate(ctx, e.key("events"), "g", "0").Err(); err != nil {
					t.Fatal(err)
				}
				res, err := e.c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{e.key("events"), ">"}, Count: 100}).Result()
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range res[0].Messages {
					e.c.XAck(ctx, e.key("events"), "g", m.ID)
				}
			}
			b := e.backend(func(c *Config) { c.ApproxTrim = true })
			rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxAgeSeconds: f64(190.5), MaxRecords: i64(15)}, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			got := e.xlen("events")
			if got <= 10 {
				t.Skipf("the server's stream nodes are small enough that an approximate trim left %d", got)
			}
			want := fmt.Sprintf("approximate trim left %d entries over max_records and %d entries older than max_age_seconds on %s: Redis trims whole stream nodes only", got-15, got-10, e.key("events"))
			if got <= 15 {
				want = fmt.Sprintf("approximate trim left %d entries older than max_age_seconds on %s: Redis trims whole stream nodes only", got-10, e.key("events"))
			}
			if !hasNote(rep, want) {
				t.Errorf("%d entries left; no note %q: %q", got, want, rep.Notes)
			}
		})
	}
}

func TestRedisAge(t *testing.T) {
	e := sharedEnv(t)
	now := float64(fixedNow.Unix())
	// 100 entries one per second, from 200 s ago to 101 s ago; and 5 audits.
	for i := range 100 {
		e.addAt("events", now-200+float64(i), 0)
	}
	for i := range 5 {
		e.addAt("audits", now-1000+float64(i), 0)
	}
	b := e.backend(nil)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxAgeSeconds: f64(150.5)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	// Kept: entries with write time >= now-150.5, i.e. seconds now-150 ... now-101: 50.
	ids := e.ids("events")
	if len(ids) != 50 || ids[0] != fmt.Sprintf("%d-0", (int64(now)-150)*1000) {
		t.Errorf("events: %d left, oldest %v; want 50 from %d-0", len(ids), ids[:min(1, len(ids))], (int64(now)-150)*1000)
	}
	if got := e.xlen("audits"); got != 0 {
		t.Errorf("audits: %d left, want 0", got)
	}
	if rep.Dropped.Age != 55 || rep.RemovedRecords != 55 {
		t.Errorf("dropped.age %d removed %d, want 55", rep.Dropped.Age, rep.RemovedRecords)
	}
}

func TestRedisAgeAndCount(t *testing.T) {
	e := sharedEnv(t)
	now := float64(fixedNow.Unix())
	for i := range 100 {
		e.addAt("events", now-100+float64(i), 0)
	}
	b := e.backend(nil)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{
		Retention: backends.Retention{MaxAgeSeconds: f64(50), MaxRecords: i64(20)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.xlen("events"); got != 20 {
		t.Errorf("%d left, want 20", got)
	}
	if rep.Dropped.Age != 50 || rep.Dropped.Count != 30 {
		t.Errorf("dropped %+v, want age 50 count 30", rep.Dropped)
	}
}

func TestRedisSizeEstimate(t *testing.T) {
	e := sharedEnv(t)
	e.addEvents("events", 2000)
	b := e.backend(nil)
	usage, err := e.c.MemoryUsage(context.Background(), e.key("events"), 10).Result()
	if err != nil {
		t.Fatal(err)
	}
	per := float64(usage) / 2000
	limit := int64(per * 500)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxTotalBytes: i64(limit)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	got := e.xlen("events")
	if got < 400 || got > 600 {
		t.Errorf("%d entries left, want about 500", got)
	}
	if !hasNote(rep, "estimate") || rep.Dropped.Bytes != 2000-got {
		t.Errorf("notes %q dropped %+v", rep.Notes, rep.Dropped)
	}
	after, _ := e.c.MemoryUsage(context.Background(), e.key("events"), 10).Result()
	if float64(after) > 1.3*float64(limit) {
		t.Errorf("memory after %d, limit %d", after, limit)
	}
}

func TestRedisDryRun(t *testing.T) {
	e := sharedEnv(t)
	now := float64(fixedNow.Unix())
	for i := range 300 {
		e.addAt("events", now-300+float64(i), 0)
	}
	e.addEvents("audits", 10)
	ret := backends.Retention{MaxAgeSeconds: f64(200), MaxRecords: i64(50)}
	b := e.backend(nil)
	beforeIDs := e.ids("events")
	dry, err := b.Compact(context.Background(), backends.CompactOptions{Retention: ret, Now: fixedNow, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if after := e.ids("events"); len(after) != len(beforeIDs) || e.xlen("audits") != 10 {
		t.Fatalf("dry run changed the stream: %d -> %d", len(beforeIDs), len(after))
	}
	if !dry.DryRun || dry.BeforeRecords != 310 || dry.AfterRecords != 60 || dry.Dropped.Age != 100 || dry.Dropped.Count != 150 {
		t.Errorf("dry run report: %+v", dry)
	}
	real, err := b.Compact(context.Background(), backends.CompactOptions{Retention: ret, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	if real.AfterRecords != dry.AfterRecords || real.Dropped != dry.Dropped {
		t.Errorf("real run %+v differs from dry run %+v", real, dry)
	}
}

// TestRedisGroupPending: entries a group has read but not acknowledged are
// kept, and the note says so; trim_unacked trims them.
func TestRedisGroupPending(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	e.addEvents("events", 200)
	if err := e.c.XGroupCreate(ctx, e.key("events"), "g1", "0").Err(); err != nil {
		t.Fatal(err)
	}
	// g1 reads 150 entries, acknowledges the first 50: pending from entry 51.
	res, err := e.c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: "g1", Consumer: "c", Streams: []string{e.key("events"), ">"}, Count: 150}).Result()
	if err != nil {
		t.Fatal(err)
	}
	msgs := res[0].Messages
	for _, m := range msgs[:50] {
		e.c.XAck(ctx, e.key("events"), "g1", m.ID)
	}
	firstPending := msgs[50].ID

	for _, dry := range []bool{true, false} {
		rep, err := e.backend(nil).Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow, DryRun: dry})
		if err != nil {
			t.Fatal(err)
		}
		if rep.AfterRecords != 150 || rep.Dropped.Count != 50 {
			t.Errorf("dry=%v: after %d dropped %+v, want 150 kept, 50 dropped", dry, rep.AfterRecords, rep.Dropped)
		}
		if !hasNote(rep, `held back 140 entries`) || !hasNote(rep, `"g1" has pending entries from id `+firstPending) {
			t.Errorf("dry=%v: notes %q", dry, rep.Notes)
		}
	}
	if ids := e.ids("events"); len(ids) != 150 || ids[0] != firstPending {
		t.Errorf("%d left, oldest %s; want 150 from %s", len(ids), ids[0], firstPending)
	}

	rep, err := e.backend(func(c *Config) { c.TrimUnacked = true }).Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	if e.xlen("events") != 10 || !hasNote(rep, "trim_unacked is set") {
		t.Errorf("trim_unacked: %d left, notes %q", e.xlen("events"), rep.Notes)
	}
}

// TestRedisGroupUndelivered: entries past a group's last-delivered id are
// kept; age limits are held back the same way.
func TestRedisGroupUndelivered(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	now := float64(fixedNow.Unix())
	var ids []string
	for i := range 100 {
		ids = append(ids, e.addAt("events", now-1000+float64(i), 0))
	}
	// Group created at entry 30: entries 31.. are undelivered.
	if err := e.c.XGroupCreate(ctx, e.key("events"), "slow", ids[29]).Err(); err != nil {
		t.Fatal(err)
	}
	// A second group that is fully caught up does not hold anything.
	if err := e.c.XGroupCreate(ctx, e.key("events"), "fast", "$").Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.backend(nil).Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxAgeSeconds: f64(10)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	left := e.ids("events")
	if len(left) != 70 || left[0] != ids[30] || rep.Dropped.Age != 30 {
		t.Errorf("%d left from %v, dropped %+v; want 70 from %s", len(left), left[:1], rep.Dropped, ids[30])
	}
	if !hasNote(rep, `held back 70 entries`) || !hasNote(rep, `"slow" has undelivered entries`) {
		t.Errorf("notes %q", rep.Notes)
	}
	// The group reads them all: nothing holds back any more.
	if _, err := e.c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: "slow", Consumer: "c", Streams: []string{e.key("events"), ">"}, Count: 1000, NoAck: true}).Result(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.backend(nil).Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxAgeSeconds: f64(10)}, Now: fixedNow}); err != nil {
		t.Fatal(err)
	}
	if n := e.xlen("events"); n != 0 {
		t.Errorf("%d left after the group caught up, want 0", n)
	}
}

func TestRedisGroupCountBoundWithinHold(t *testing.T) {
	// A group that holds less than the count limit removes: the count
	// limit applies exactly as without groups.
	e := sharedEnv(t)
	ctx := context.Background()
	e.addEvents("events", 300)
	ids := e.ids("events")
	if err := e.c.XGroupCreate(ctx, e.key("events"), "g", ids[279]).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.backend(nil).Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	left := e.ids("events")
	if len(left) != 100 || left[0] != ids[200] || hasNote(rep, "held back") || rep.Dropped.Count != 200 {
		t.Errorf("%d left from %s, notes %q, dropped %+v", len(left), left[0], rep.Notes, rep.Dropped)
	}
}

func TestRedisLockContention(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	e.addEvents("events", 100)
	a := e.backend(func(c *Config) { c.Node = "node-a" })
	b := e.backend(func(c *Config) { c.Node = "node-b" })
	l, holder, err := a.acquire(ctx)
	if err != nil || l == nil {
		t.Fatalf("acquire: %v %q", err, holder)
	}
	if v, _ := e.c.Get(ctx, e.prefix+":local:watcher-lock").Result(); !strings.HasPrefix(v, "node-a:") {
		t.Errorf("lock value %q", v)
	}
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Skipped != "held by node-a" || e.xlen("events") != 100 {
		t.Errorf("skipped %q, %d left", rep.Skipped, e.xlen("events"))
	}
	// The holder's own release must not delete a lock someone else holds.
	if err := l.release(); err != nil {
		t.Fatal(err)
	}
	rep, err = b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10)}, Now: fixedNow})
	if err != nil || rep.Skipped != "" || e.xlen("events") != 10 {
		t.Errorf("after release: %v skipped %q, %d left", err, rep.Skipped, e.xlen("events"))
	}
	l2, _, _ := b.acquire(ctx)
	e.c.Set(ctx, b.lockKey, "node-c:other", time.Minute)
	if err := l2.release(); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.c.Get(ctx, b.lockKey).Result(); v != "node-c:other" {
		t.Errorf("release deleted someone else's lock: %q", v)
	}
}

func TestRedisLockRenewAndLoss(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	b := e.backend(func(c *Config) { c.LockTTL = 300 * time.Millisecond })
	l, _, err := b.acquire(ctx)
	if err != nil || l == nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := l.keep(cctx, cancel)
	defer stop()
	// Renewed: the PTTL goes back up.
	deadline := time.Now().Add(10 * time.Second)
	low := time.Duration(1 << 62)
	renewed := false
	for time.Now().Before(deadline) && !renewed {
		d, err := e.c.PTTL(ctx, b.lockKey).Result()
		if err != nil || d <= 0 {
			t.Fatalf("lock expired: %v %v", d, err)
		}
		renewed = d > low+20*time.Millisecond
		low = min(low, d)
		time.Sleep(10 * time.Millisecond)
	}
	if !renewed {
		t.Fatal("lock was never renewed")
	}
	// Someone takes it over: the compaction is cancelled with errLockLost.
	e.c.Set(ctx, b.lockKey, "node-z:x", time.Minute)
	select {
	case <-cctx.Done():
		if !errors.Is(context.Cause(cctx), backends.ErrBusy) {
			t.Errorf("cause %v", context.Cause(cctx))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("lock loss not noticed")
	}
}

func TestRedisDownAndRestart(t *testing.T) {
	srv := testutil.StartRedis(t, "--requirepass", "s3cret")
	url := "redis://:s3cret@" + srv.Addr() + "/0"
	e := newEnv(t, url)
	b := e.backend(func(c *Config) { c.CommandTimeout = time.Second })
	ctx := context.Background()
	srv.Stop()
	for _, dry := range []bool{false, true} {
		_, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(1)}, DryRun: dry})
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("dry=%v: error %v does not wrap ErrUnavailable", dry, err)
		}
		t.Logf("dry=%v: %v", dry, err)
		if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), srv.Addr()) {
			t.Errorf("error leaks the password or omits the address: %v", err)
		}
	}
	if st, err := b.Stat(ctx); !errors.Is(err, backends.ErrUnavailable) || st.Bytes != -1 {
		t.Errorf("stat while down: %+v %v", st, err)
	}
	if _, err := b.Scan(ctx); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("scan while down: %v", err)
	}
	srv.Restart()
	e.addEvents("events", 50)
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(5)}})
	if err != nil || e.xlen("events") != 5 || rep.RemovedRecords != 45 {
		t.Fatalf("after restart: %v, %d left, report %+v", err, e.xlen("events"), rep)
	}
}

// killHook stops the server right after the first XTRIM.
type killHook struct {
	once sync.Once
	kill func()
}

func (h *killHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *killHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h *killHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "xtrim" {
			h.once.Do(h.kill)
		}
		return err
	}
}

func TestRedisKilledMidRun(t *testing.T) {
	srv := testutil.StartRedis(t)
	e := newEnv(t, srv.URL())
	e.addEvents("events", 30000)
	b := e.backend(func(c *Config) { c.CommandTimeout = time.Second })
	b.client.AddHook(&killHook{kill: srv.Stop})
	ctx := context.Background()
	_, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100)}})
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("error %v does not wrap ErrUnavailable", err)
	}
	srv.Restart() // empty: no persistence
	e.addEvents("events", 500)
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100)}})
	if err != nil || e.xlen("events") != 100 || rep.RemovedRecords != 400 {
		t.Fatalf("after restart: %v, %d left", err, e.xlen("events"))
	}
}

// trimHook records what every XTRIM removed.
type trimHook struct {
	mu      sync.Mutex
	removed []int64
}

func (h *trimHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *trimHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h *trimHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if c, ok := cmd.(*goredis.IntCmd); ok && cmd.Name() == "xtrim" && err == nil {
			h.mu.Lock()
			h.removed = append(h.removed, c.Val())
			h.mu.Unlock()
		}
		return err
	}
}

func TestRedisBoundedSteps(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 200,000 entries")
	}
	srv := testutil.StartRedis(t)
	e := newEnv(t, srv.URL())
	ctx := context.Background()
	for _, approx := range []bool{true, false} {
		t.Run(fmt.Sprintf("approx=%v", approx), func(t *testing.T) {
			e.c.Del(ctx, e.key("events"))
			fillServerSide(t, e.c, e.key("events"), 200000)
			b := e.backend(func(c *Config) { c.ApproxTrim = approx })
			h := &trimHook{}
			b.client.AddHook(h)
			var progressCalls int
			rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(10000)},
				Progress: func(done, total int64) { progressCalls++ }})
			if err != nil {
				t.Fatal(err)
			}
			var sum int64
			for _, n := range h.removed {
				if n > DefaultStepEntries {
					t.Errorf("one XTRIM removed %d entries (> %d)", n, DefaultStepEntries)
				}
				sum += n
			}
			if len(h.removed) < 19 {
				t.Errorf("only %d XTRIM calls for 190,000 entries", len(h.removed))
			}
			node := b.nodeMaxEntries(ctx)
			got := e.xlen("events")
			if approx && (got < 10000 || got > 10000+node) || !approx && got != 10000 {
				t.Errorf("%d entries left (approx=%v, node %d)", got, approx, node)
			}
			if sum != rep.RemovedRecords || rep.AfterRecords != got || progressCalls == 0 {
				t.Errorf("removed %d per XTRIM, report %+v, progress calls %d", sum, rep, progressCalls)
			}
		})
	}
}

// fillServerSide appends n Papyra-shaped entries with a Lua script, in
// batches, much faster than from the client.
func fillServerSide(t testing.TB, c *goredis.Client, key string, n int) {
	t.Helper()
	script := goredis.NewScript(`for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'data', string.format(ARGV[2], i))
end
return 0`)
	tmpl := `{"kind": "event", "system_id": "local", "actor_address": "local/actor-%d", "event_type": "ActorStarted", "payload": {"note": "some payload text to reach papyra-like size, more text"}, "timestamp": 1795599998.0}`
	for done := 0; done < n; done += 10000 {
		if err := script.Run(context.Background(), c, []string{key}, min(10000, n-done), tmpl).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRedisScan(t *testing.T) {
	e := sharedEnv(t)
	ctx := context.Background()
	b := e.backend(nil)
	if a, err := b.Scan(ctx); err != nil || len(a) != 0 {
		t.Fatalf("empty: %v %v", a, err)
	}
	e.addEvents("events", 3)
	add := func(stream string, vals ...any) string {
		id, err := e.c.XAdd(ctx, &goredis.XAddArgs{Stream: e.key(stream), Values: vals}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	noData := e.key("events") + " " + add("events", "payload", "x")
	notJSON := e.key("events") + " " + add("events", "data", "{not json")
	notObject := e.key("audits") + " " + add("audits", "data", "[1,2]")
	noTS := e.key("audits") + " " + add("audits", "data", `{"kind": "audit", "timestamp": "yesterday"}`)
	unknown := e.key("dead_letters") + " " + add("dead_letters", "data", `{"kind": "mystery", "timestamp": 1.0}`)
	nan := e.key("dead_letters") + " " + add("dead_letters", "data", `{"kind": "dead_letter", "payload": NaN, "timestamp": 2.0}`)
	if err := e.c.Set(ctx, e.prefix+":other", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := b.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		noData: backends.AnomalyMissingData, notJSON: backends.AnomalyInvalidLine, notObject: backends.AnomalyInvalidLine,
		noTS: backends.AnomalyMissingTimestamp, unknown: backends.AnomalyUnknownKind,
	}
	if len(got) != len(want) {
		t.Errorf("got %d anomalies, want %d: %+v", len(got), len(want), got)
	}
	for _, a := range got {
		found := false
		for where, typ := range want {
			key, id, _ := strings.Cut(where, " ")
			if a.Path == key && strings.Contains(a.Detail, "entry "+id) && a.Type == typ {
				found = true
			}
		}
		if !found || a.Target != "r" || !strings.HasPrefix(a.Path, e.prefix+":local:") {
			t.Errorf("unexpected anomaly %+v", a)
		}
		if key, id, _ := strings.Cut(nan, " "); a.Path == key && strings.Contains(a.Detail, id) {
			t.Errorf("NaN payload reported: %+v", a)
		}
	}

	// A key that is not a stream is unreadable, not a crash; Compact
	// names it.
	e.c.Del(ctx, e.key("audits"))
	e.c.Set(ctx, e.key("audits"), "oops", 0)
	got, err = b.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unreadable := 0
	for _, a := range got {
		if a.Type == backends.AnomalyUnreadable && a.Path == e.key("audits") {
			unreadable++
		}
	}
	if unreadable != 1 {
		t.Errorf("wrong-type key: %+v", got)
	}
	_, err = b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(1)}})
	if err == nil || errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), e.key("audits")) {
		t.Errorf("compact over a wrong-type key: %v", err)
	}
}

func TestRedisStatAndRecover(t *testing.T) {
	e := sharedEnv(t)
	b := e.backend(nil)
	ctx := context.Background()
	st, err := b.Stat(ctx)
	if err != nil || st.Bytes != 0 || len(st.Files) != 0 {
		t.Fatalf("empty: %+v %v", st, err)
	}
	e.addEvents("events", 100)
	st, err = b.Stat(ctx)
	if err != nil || st.Bytes <= 0 {
		t.Fatalf("stat: %+v %v", st, err)
	}
	if err := b.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Kind() != backends.KindRedis {
		t.Error(b.Kind())
	}
}

func TestRedisBadURL(t *testing.T) {
	for _, u := range []string{
		"http://user:hunter2@host:6379/0",
		"redis://user:hunter2@host:6379/notadb",
		"redis://user:hunter2@host:port/0",
		"redis://user:hunter2@[::1/0",
		"",
		// go-redis accepts these; connecting would fail at every attempt.
		"redis://user:hunter2@host:99999/0",
		"redis://user:hunter2@host:0/0",
		"redis://user:hunter2@host:6379/-1",
		"redis://user:hunter2@/0",
		"redis://user:hunter2@256.1.1.1:6379/0",
		"unix://user:hunter2@/?db=1",
		"unix://user:hunter2@/run/redis.sock?db=x",
	} {
		_, err := New(Config{Name: "t", URL: u})
		if err == nil {
			t.Errorf("%q: no error", u)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: error leaks the password: %v", u, err)
		}
		if !strings.Contains(err.Error(), `"t"`) {
			t.Errorf("%q: error does not name the target: %v", u, err)
		}
	}
	if got := RedactURL("redis://u:pw@h:1/0"); strings.Contains(got, "pw") {
		t.Error(got)
	}
	b, err := New(Config{Name: "t", URL: "rediss://u:pw@h:1/2"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.cfg.Prefix != "papyra" || b.cfg.SystemID != "local" || b.lockKey != "papyra:local:watcher-lock" ||
		strings.Join(b.Streams(), ",") != "papyra:local:events,papyra:local:audits,papyra:local:dead_letters" {
		t.Errorf("defaults: %+v %v", b.cfg, b.Streams())
	}
}

// Compile-time check.
var _ backends.Backend = (*Streams)(nil)

// TestRedisConcurrentWriter: Papyra keeps appending while the trim runs.
// The compaction ends, the newest entries survive, and what was appended
// during the run is reported.
func TestRedisConcurrentWriter(t *testing.T) {
	srv := testutil.StartRedis(t)
	e := newEnv(t, srv.URL())
	ctx := context.Background()
	fillServerSide(t, e.c, e.key("events"), 50000)
	b := e.backend(nil)
	stop := make(chan struct{})
	lastID := make(chan string)
	started := make(chan struct{})
	go func() {
		last := ""
		for i := 0; ; i++ {
			id, err := e.c.XAdd(ctx, &goredis.XAddArgs{Stream: e.key("events"), Values: []any{"data", papyraEvent(1, i)}}).Result()
			if err == nil {
				last = id
			}
			if i == 10 {
				close(started)
			}
			select {
			case <-stop:
				lastID <- last
				return
			default:
			}
		}
	}()
	<-started
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(1000)}})
	close(stop)
	last := <-lastID
	if err != nil {
		t.Fatal(err)
	}
	if rep.AfterRecords < 1000 || rep.RemovedRecords < 40000 {
		t.Errorf("report %+v", rep)
	}
	if rep.AppendedDuring == 0 {
		t.Errorf("no appended_during: %+v", rep)
	}
	msgs, err := e.c.XRevRangeN(ctx, e.key("events"), "+", "-", 1).Result()
	if err != nil || len(msgs) != 1 || msgs[0].ID != last {
		t.Errorf("newest entry %v, want %s (%v)", msgs, last, err)
	}
}

// TestRedisACLUser: a user that may not run MEMORY or CONFIG still
// compacts; sizes are then unknown rather than an error.
func TestRedisACLUser(t *testing.T) {
	srv := testutil.StartRedis(t)
	admin := newEnv(t, srv.URL())
	ctx := context.Background()
	if err := admin.c.Do(ctx, "ACL", "SETUSER", "papyra", "on", ">pw-123", "~*", "+@all", "-memory", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	admin.addEvents("events", 300)
	e := &redisEnv{t: t, url: "redis://papyra:pw-123@" + srv.Addr() + "/0", prefix: admin.prefix, c: admin.c}
	b := e.backend(nil)
	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(100), MaxTotalBytes: i64(1 << 30)}})
	if err != nil {
		t.Fatal(err)
	}
	if e.xlen("events") != 100 || rep.BeforeBytes != nil || rep.AfterBytes != nil || rep.ReclaimedBytes != nil || rep.RemovedRecords != 200 {
		t.Errorf("report %+v", rep)
	}
	if !hasNote(rep, "mean data size") {
		t.Errorf("notes %q", rep.Notes)
	}
	if st, err := b.Stat(ctx); err != nil || st.Bytes != -1 {
		t.Errorf("stat %+v %v", st, err)
	}
	// A wrong password is an error naming the target, without the password.
	bad := e.backend(func(c *Config) { c.URL = "redis://papyra:wrong-pw@" + srv.Addr() + "/0" })
	_, err = bad.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: i64(1)}})
	if err == nil || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("wrong password: %v", err)
	}
	t.Log(err)
}

// TestRedisEstimateApproxCountsWholeNodes: with approx_trim, what an
// approximate trim cannot remove (less than one stream node over the limit)
// is not reclaimable, so the retention trigger does not chase it forever:
// the estimate never promises more than the trim then removes. An exact
// trim's estimate counts every entry over the limit.
func TestRedisEstimateApproxCountsWholeNodes(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		approx bool
		small  bool // entries small enough for one node
		n      int
	}{{"approx one node", true, true, 20}, {"approx papyra entries", true, false, 20},
		{"approx many nodes", true, false, 1000}, {"exact", false, false, 20}} {
		t.Run(c.name, func(t *testing.T) {
			e := sharedEnv(t)
			if c.small {
				for i := range 20 {
					e.c.XAdd(ctx, &goredis.XAddArgs{Stream: e.key("events"), Values: []any{"data", fmt.Sprintf(`{"n":%d}`, i)}})
				}
				if k := e.c.XInfoStream(ctx, e.key("events")).Val().RadixTreeKeys; k != 1 {
					t.Fatalf("20 small entries make %d stream nodes, want 1 (stream-node-max-entries below 20?)", k)
				}
			} else {
				e.addEvents("events", c.n)
			}
			b := e.backend(func(cfg *Config) { cfg.ApproxTrim = c.approx })
			ret := backends.Retention{MaxRecords: i64(5)}
			est, err := b.NewEstimator().Estimate(ctx, fixedNow, ret)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := b.Compact(ctx, backends.CompactOptions{Retention: ret, Now: fixedNow})
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !c.approx && (est.ReclaimableRecords != 15 || rep.RemovedRecords != 15):
				t.Fatalf("exact: reclaimable %d, removed %d, want 15", est.ReclaimableRecords, rep.RemovedRecords)
			case c.small && (est.ReclaimableRecords != 0 || rep.RemovedRecords != 0):
				t.Fatalf("one node: reclaimable %d, removed %d, want 0", est.ReclaimableRecords, rep.RemovedRecords)
			case est.ReclaimableRecords > rep.RemovedRecords || (rep.RemovedRecords > 0) != (est.ReclaimableRecords > 0):
				t.Fatalf("reclaimable %d, an approximate trim removed %d", est.ReclaimableRecords, rep.RemovedRecords)
			case c.n == 1000 && est.ReclaimableRecords < 800:
				t.Fatalf("1000 entries over 5: reclaimable %d (removed %d), want most of them", est.ReclaimableRecords, rep.RemovedRecords)
			}
			t.Logf("reclaimable %d, removed %d", est.ReclaimableRecords, rep.RemovedRecords)
		})
	}
}

// TestRedisEstimateApproxNextExpiry: with approx_trim, an age excess
// smaller than one stream node is not reclaimable, and NextExpiry is when
// the whole node is past max_age_seconds (the retention trigger's age
// deadline then): here the last of the node's 20 entries. An exact trim can
// remove the expired entries now.
func TestRedisEstimateApproxNextExpiry(t *testing.T) {
	ctx := context.Background()
	for _, approx := range []bool{true, false} {
		t.Run(fmt.Sprintf("approx=%v", approx), func(t *testing.T) {
			e := sharedEnv(t)
			base := fixedNow.Add(-100 * time.Second)
			for i := range 20 { // one second apart, one node
				id := fmt.Sprintf("%d-0", base.Add(time.Duration(i)*time.Second).UnixMilli())
				if err := e.c.XAdd(ctx, &goredis.XAddArgs{Stream: e.key("events"), ID: id, Values: []any{"data", fmt.Sprintf(`{"n":%d}`, i)}}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if k := e.c.XInfoStream(ctx, e.key("events")).Val().RadixTreeKeys; k != 1 {
				t.Fatalf("20 small entries make %d stream nodes, want 1", k)
			}
			b := e.backend(func(cfg *Config) { cfg.ApproxTrim = approx })
			// The first 3 entries are past 97 s.
			est, err := b.NewEstimator().Estimate(ctx, fixedNow, backends.Retention{MaxAgeSeconds: new(97.0)})
			if err != nil {
				t.Fatal(err)
			}
			wantRecl, wantNext := int64(3), fixedNow
			if approx {
				wantRecl, wantNext = 0, base.Add(19*time.Second+97*time.Second)
			}
			if est.ReclaimableRecords != wantRecl || !est.NextExpiry.Equal(wantNext) || !est.Oldest.Equal(base) {
				t.Fatalf("reclaimable %d, next expiry %v, oldest %v; want %d, %v, %v",
					est.ReclaimableRecords, est.NextExpiry, est.Oldest, wantRecl, wantNext, base)
			}
		})
	}
}

// cmdCounter records what a client sends: single commands and pipelines.
type cmdCounter struct {
	mu        sync.Mutex
	singles   []string
	pipelines [][]string
}

func (h *cmdCounter) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *cmdCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		switch name := cmdName(cmd); name {
		case "hello", "auth", "select", "client":
			// A new connection's handshake, not the caller's command.
		default:
			h.mu.Lock()
			h.singles = append(h.singles, name)
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}
func (h *cmdCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		var names []string
		for _, c := range cmds {
			names = append(names, cmdName(c))
		}
		h.mu.Lock()
		h.pipelines = append(h.pipelines, names)
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (h *cmdCounter) reset() ([]string, [][]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, p := h.singles, h.pipelines
	h.singles, h.pipelines = nil, nil
	return s, p
}

// cmdName is "xinfo stream", "memory usage", "get": the command and, for
// container commands, its subcommand.
func cmdName(c goredis.Cmder) string {
	args := c.Args()
	name := strings.ToLower(fmt.Sprint(args[0]))
	if (name == "xinfo" || name == "memory" || name == "config") && len(args) > 1 {
		name += " " + strings.ToLower(fmt.Sprint(args[1]))
	}
	return name
}

// TestRedisEstimateCommands: each refresh of the estimate is one round
// trip: one pipeline of XINFO STREAM and MEMORY USAGE per stream, and no
// other command (approx_trim included), whether the streams exist or not.
func TestRedisEstimateCommands(t *testing.T) {
	for _, approx := range []bool{true, false} {
		t.Run(fmt.Sprintf("approx=%v", approx), func(t *testing.T) {
			e := sharedEnv(t)
			e.addEvents("events", 500) // the other streams do not exist
			b := e.backend(func(c *Config) { c.ApproxTrim = approx })
			h := &cmdCounter{}
			b.client.AddHook(h)
			est := b.NewEstimator()
			var want []string
			for range b.streams {
				want = append(want, "xinfo stream", "memory usage")
			}
			if len(b.streams) < 2 {
				t.Fatalf("streams %v", b.streams)
			}
			ret := backends.Retention{MaxRecords: i64(100), MaxAgeSeconds: new(60.0)}
			for i := range 3 {
				h.reset()
				got, err := est.Estimate(context.Background(), fixedNow.Add(time.Duration(i)*time.Second), ret)
				if err != nil {
					t.Fatal(err)
				}
				if got.Records != 500 || got.ReclaimableRecords == 0 {
					t.Fatalf("estimate %+v", got)
				}
				singles, pipes := h.reset()
				if len(singles) != 0 || len(pipes) != 1 || !slices.Equal(pipes[0], want) {
					t.Fatalf("refresh %d sent %v and pipelines %v; want one pipeline %v", i, singles, pipes, want)
				}
			}
		})
	}
}
