package backends_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/jsonfile"
	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/backends/redis"
	"github.com/papyra/watcher/backends/rotating"
	goredis "github.com/redis/go-redis/v9"
)

// estLines writes n records one second apart from t0, with now and then a
// line that is not a record or a record without timestamp.
func estLines(n int, t0 float64, rng *rand.Rand) string {
	var b strings.Builder
	for i := range n {
		switch rng.IntN(50) {
		case 0:
			b.WriteString("not json\n")
		case 1:
			fmt.Fprintf(&b, "{\"kind\":\"event\",\"seq\":%d}\n", i)
		}
		fmt.Fprintf(&b, "{\"kind\":\"event\",\"system_id\":\"s\",\"payload\":{\"i\":%d,\"pad\":\"%s\"},\"timestamp\":%.1f}\n",
			i, strings.Repeat("x", rng.IntN(200)), t0+float64(i))
	}
	return b.String()
}

func ptrTo[T any](v T) *T { return &v }

// TestEstimateMatchesDryRun: the estimate of a json file is what a dry-run
// compaction removes, for age, count and size limits, and stays right as
// the file grows and after a compaction.
func TestEstimateMatchesDryRun(t *testing.T) {
	defer ndjson.SetEstimateMarkEvery(4 << 10)()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := 1_800_000_000.0
	if err := os.WriteFile(path, []byte(estLines(3000, t0, rng)), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := jsonfile.New(jsonfile.Config{Name: "events", Path: path, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	est := backends.NewEstimator(j)
	now := timeOfSeconds(t0 + 3000)
	check := func(name string, r backends.Retention, tol int64) {
		t.Helper()
		got, err := est.Estimate(ctx, now, r)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := j.Compact(ctx, backends.CompactOptions{Retention: r, Now: now, DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		if d := got.ReclaimableRecords - rep.RemovedRecords; d < -tol || d > tol {
			t.Errorf("%s: reclaimable records %d, dry run removes %d", name, got.ReclaimableRecords, rep.RemovedRecords)
		}
		if d := got.ReclaimableBytes - *rep.ReclaimedBytes; d < -2000 || d > 2000 {
			t.Errorf("%s: reclaimable bytes %d, dry run reclaims %d", name, got.ReclaimableBytes, *rep.ReclaimedBytes)
		}
		if got.Bytes != *rep.BeforeBytes {
			t.Errorf("%s: bytes %d, before_bytes %d", name, got.Bytes, *rep.BeforeBytes)
		}
	}
	check("none", backends.Retention{}, 0)
	check("age", backends.Retention{MaxAgeSeconds: ptrTo(1000.0)}, 0)
	check("count", backends.Retention{MaxRecords: ptrTo(int64(500))}, 0)
	check("bytes", backends.Retention{MaxTotalBytes: ptrTo(int64(100_000))}, 0)
	// Records without a timestamp between the age and the count cut make
	// the count cut an estimate (within a percent).
	check("age+count", backends.Retention{MaxAgeSeconds: ptrTo(2500.0), MaxRecords: ptrTo(int64(2000))}, 30)

	got, _ := est.Estimate(ctx, now, backends.Retention{MaxAgeSeconds: ptrTo(1000.0)})
	if want := timeOfSeconds(t0); !got.Oldest.Equal(want) {
		t.Errorf("oldest %v, want %v", got.Oldest, want)
	}
	if want := timeOfSeconds(t0 + 2000 + 1000); got.NextExpiry.Sub(want).Abs() > time.Millisecond {
		t.Errorf("next expiry %v, want %v", got.NextExpiry, want)
	}

	// Appended lines are read incrementally.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(estLines(500, t0+3000, rng))
	f.Close()
	now = timeOfSeconds(t0 + 3500)
	check("age after append", backends.Retention{MaxAgeSeconds: ptrTo(1000.0)}, 0)

	// After a real compaction (a new file or the head rewritten in place).
	r := backends.Retention{MaxAgeSeconds: ptrTo(1000.0)}
	if _, err := j.Compact(ctx, backends.CompactOptions{Retention: r, Now: now}); err != nil {
		t.Fatal(err)
	}
	check("after compaction", r, 0)
	got, _ = est.Estimate(ctx, now, r)
	if age := got.OldestAge(now); age > 1000*time.Second {
		t.Errorf("oldest age after compaction %v", age)
	}
}

func TestEstimateRotating(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	rng := rand.New(rand.NewPCG(3, 4))
	t0 := 1_800_000_000.0
	for i := 3; i >= 0; i-- {
		name := path
		if i > 0 {
			name = fmt.Sprintf("%s.%d", path, i)
		}
		if err := os.WriteFile(name, []byte(estLines(400, t0+float64(400*(3-i)), rng)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := rotating.New(rotating.Config{Name: "rot", Path: path, MaxBytes: 1 << 20, MaxFiles: 4, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	est := backends.NewEstimator(b)
	now := timeOfSeconds(t0 + 1600)
	for _, r := range []backends.Retention{{MaxAgeSeconds: ptrTo(700.0)}, {MaxRecords: ptrTo(int64(900))}, {}} {
		got, err := est.Estimate(ctx, now, r)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := b.Compact(ctx, backends.CompactOptions{Retention: r, Now: now, DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		if got.ReclaimableRecords != rep.RemovedRecords {
			t.Errorf("%+v: reclaimable records %d, dry run removes %d", r, got.ReclaimableRecords, rep.RemovedRecords)
		}
		if !got.Oldest.Equal(timeOfSeconds(t0)) {
			t.Errorf("oldest %v", got.Oldest)
		}
	}
}

func TestEstimateRedis(t *testing.T) {
	ctx := context.Background()
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Skip("no redis at 127.0.0.1:6379")
	}
	prefix := fmt.Sprintf("wt11est%d", time.Now().UnixNano())
	key := prefix + ":local:events"
	defer c.Del(ctx, key)
	base := time.Now().Add(-100 * time.Second).UnixMilli()
	for i := range 100 {
		c.XAdd(ctx, &goredis.XAddArgs{Stream: key, ID: fmt.Sprintf("%d-0", base+int64(i)*1000), Values: []any{"data", `{"kind":"event"}`}})
	}
	b, err := redis.New(redis.Config{Name: "r", URL: "redis://127.0.0.1:6379/0", Prefix: prefix, SystemID: "local"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	est := backends.NewEstimator(b)
	got, err := est.Estimate(ctx, time.Now(), backends.Retention{MaxAgeSeconds: ptrTo(50.0), MaxRecords: ptrTo(int64(30))})
	if err != nil {
		t.Fatal(err)
	}
	if got.Records != 100 || got.ReclaimableRecords != 70 || got.Bytes <= 0 || got.ReclaimableBytes <= 0 {
		t.Errorf("estimate %+v", got)
	}
	if age := got.OldestAge(time.Now()); age < 99*time.Second || age > 110*time.Second {
		t.Errorf("oldest age %v", age)
	}
	got, _ = est.Estimate(ctx, time.Now(), backends.Retention{MaxAgeSeconds: ptrTo(50.0)})
	if got.ReclaimableRecords < 45 || got.ReclaimableRecords > 55 {
		t.Errorf("age estimate %d of 100, want about 50", got.ReclaimableRecords)
	}
}

// timeOfSeconds converts Papyra's fractional Unix seconds to a time.
func timeOfSeconds(s float64) time.Time {
	sec, frac := math.Modf(s)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// TestEstimateRefreshAllocatesLittle: a refresh of a json file's estimate
// that finds nothing appended, or a few lines, and its cuts outside the
// file allocates what it reads, not a line reader's 1 MiB block and an
// index block per refresh: a daemon refreshes every target every 10 s, and
// those allocations were most of its idle CPU (the GC clearing them).
func TestEstimateRefreshAllocatesLittle(t *testing.T) {
	for _, name := range []string{"one line", "1 MiB"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "events.ndjson")
			n := 1
			if name == "1 MiB" {
				n = 5000
			}
			t0 := float64(time.Now().Unix())
			var b strings.Builder
			for i := range n {
				fmt.Fprintf(&b, "{\"kind\":\"event\",\"payload\":{\"i\":%d,\"pad\":\"%s\"},\"timestamp\":%.1f}\n", i, strings.Repeat("x", 150), t0-float64(n-i))
			}
			if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			j, err := jsonfile.New(jsonfile.Config{Name: "e", Path: path, StateDir: filepath.Join(t.TempDir(), "state")})
			if err != nil {
				t.Fatal(err)
			}
			est := backends.NewEstimator(j)
			r := backends.Retention{MaxAgeSeconds: ptrTo(30 * 86400.0), MaxRecords: ptrTo(int64(1_000_000))}
			ctx := context.Background()
			if _, err := est.Estimate(ctx, time.Now(), r); err != nil { // the first reads the file
				t.Fatal(err)
			}
			app, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()
			const refreshes = 50
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for i := range refreshes {
				if i%2 == 1 {
					fmt.Fprintf(app, "{\"kind\":\"event\",\"timestamp\":%.1f}\n", t0)
				}
				got, err := est.Estimate(ctx, time.Now(), r)
				if err != nil {
					t.Fatal(err)
				}
				if got.ReclaimableRecords != 0 {
					t.Fatalf("reclaimable %d", got.ReclaimableRecords)
				}
			}
			runtime.ReadMemStats(&after)
			if per := (after.TotalAlloc - before.TotalAlloc) / refreshes; per > 32<<10 {
				t.Fatalf("%d bytes allocated per refresh, want at most 32 KiB", per)
			}
		})
	}
}
