package executor

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/redis"
	rtestutil "github.com/papyra/watcher/internal/testutil"
)

// fakeBackend counts calls and lets a test hold a compaction open.
type fakeBackend struct {
	running, maxRunning atomic.Int32
	compacts, recovers  atomic.Int32
	closed              atomic.Bool
	hold                chan struct{} // Compact waits for it when non-nil
	err                 error
	skipped             string // Compact reports this as Report.Skipped
	anomalies           []backends.Anomaly
	scanErr             error
	scans               atomic.Int32
	lastOpts            backends.CompactOptions
	mu                  sync.Mutex
}

func (f *fakeBackend) Kind() string { return "fake" }
func (f *fakeBackend) Compact(ctx context.Context, opts backends.CompactOptions) (backends.Report, error) {
	n := f.running.Add(1)
	defer f.running.Add(-1)
	for {
		m := f.maxRunning.Load()
		if n <= m || f.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	f.compacts.Add(1)
	f.mu.Lock()
	f.lastOpts = opts
	f.mu.Unlock()
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return backends.Report{}, ctx.Err()
		}
	}
	if opts.WaitIO != nil {
		if err := opts.WaitIO(ctx, 3<<20); err != nil {
			return backends.Report{}, err
		}
	}
	if f.skipped != "" {
		return backends.Report{Skipped: f.skipped}, nil
	}
	return backends.Report{BeforeRecords: 10, AfterRecords: 4, BeforeBytes: backends.Int64(1000),
		AfterBytes: backends.Int64(400)}, f.err
}
func (f *fakeBackend) Stat(context.Context) (backends.Stat, error) {
	return backends.Stat{Bytes: 1}, nil
}
func (f *fakeBackend) Scan(context.Context) ([]backends.Anomaly, error) {
	f.scans.Add(1)
	return f.anomalies, f.scanErr
}
func (f *fakeBackend) Recover(context.Context) error { f.recovers.Add(1); return nil }
func (f *fakeBackend) Close() error                  { f.closed.Store(true); return nil }

func newEx(t *testing.T, stateDir string, b backends.Backend) *Executor {
	t.Helper()
	ex := New(Options{StateDir: stateDir, Node: "n1", LockTimeout: 200 * time.Millisecond})
	ex.SetTargets([]Target{{Name: "t", Backend: b}})
	return ex
}

func TestRunFillsReportAndPublishes(t *testing.T) {
	b := &fakeBackend{}
	ex := newEx(t, t.TempDir(), b)
	var got []backends.Report
	ex.Subscribe(func(r backends.Report) { got = append(got, r) })
	r := ex.Run(context.Background(), Job{Target: "t", Trigger: "growth"})
	if r.Error != "" || r.Target != "t" || r.Backend != "fake" || r.Trigger != "growth" || r.Node != "n1" {
		t.Fatalf("report %+v", r)
	}
	if r.RemovedRecords != 6 || r.ReclaimedBytes == nil || *r.ReclaimedBytes != 600 || r.StartedAt.IsZero() {
		t.Fatalf("derived fields: %+v", r)
	}
	if b.recovers.Load() != 1 {
		t.Errorf("Recover not called before Compact")
	}
	if len(got) != 1 || got[0].Target != "t" {
		t.Fatalf("subscriber got %+v", got)
	}
}

func TestRunUnknownTarget(t *testing.T) {
	ex := newEx(t, t.TempDir(), &fakeBackend{})
	r := ex.Run(context.Background(), Job{Target: "nope"})
	if !strings.Contains(r.Error, "unknown target") {
		t.Fatalf("error %q", r.Error)
	}
}

func TestRunErrorAndScan(t *testing.T) {
	b := &fakeBackend{err: errors.New("disk on fire")}
	ex := newEx(t, t.TempDir(), b)
	if r := ex.Run(context.Background(), Job{Target: "t"}); r.Error != "disk on fire" {
		t.Fatalf("error %q", r.Error)
	}
	b.err = nil
	b.anomalies = []backends.Anomaly{{Type: backends.AnomalyInvalidLine, Path: "/x"}}
	r := ex.Run(context.Background(), Job{Target: "t", Scan: true})
	if len(r.Anomalies) != 1 || r.Anomalies[0].Target != "t" {
		t.Fatalf("anomalies %+v", r.Anomalies)
	}
}

func TestSingleFlightInProcess(t *testing.T) {
	b := &fakeBackend{hold: make(chan struct{})}
	ex := newEx(t, t.TempDir(), b)
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() { defer wg.Done(); ex.Run(context.Background(), Job{Target: "t"}) }()
	}
	for b.compacts.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(b.hold)
	wg.Wait()
	if b.maxRunning.Load() != 1 || b.compacts.Load() != 5 {
		t.Fatalf("max running %d, compacts %d", b.maxRunning.Load(), b.compacts.Load())
	}
}

// Two executors on one state dir stand for the daemon and a manual
// `watcher compact`: the lock file keeps them apart.
func TestLockAcrossExecutors(t *testing.T) {
	dir := t.TempDir()
	b1 := &fakeBackend{hold: make(chan struct{})}
	b2 := &fakeBackend{}
	ex1, ex2 := newEx(t, dir, b1), newEx(t, dir, b2)
	done := make(chan backends.Report)
	go func() { done <- ex1.Run(context.Background(), Job{Target: "t"}) }()
	for b1.compacts.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	r := ex2.Run(context.Background(), Job{Target: "t"})
	if !strings.Contains(r.Error, backends.ErrBusy.Error()) || b2.compacts.Load() != 0 {
		t.Fatalf("second compactor: error %q, compacts %d", r.Error, b2.compacts.Load())
	}
	close(b1.hold)
	if r := <-done; r.Error != "" {
		t.Fatal(r.Error)
	}
	if r := ex2.Run(context.Background(), Job{Target: "t"}); r.Error != "" {
		t.Fatalf("after release: %s", r.Error)
	}
}

func TestTimeoutCancelsCompaction(t *testing.T) {
	b := &fakeBackend{hold: make(chan struct{})}
	ex := New(Options{StateDir: t.TempDir(), Timeout: 50 * time.Millisecond})
	ex.SetTargets([]Target{{Name: "t", Backend: b}})
	r := ex.Run(context.Background(), Job{Target: "t"})
	if !strings.Contains(r.Error, "deadline exceeded") {
		t.Fatalf("error %q", r.Error)
	}
}

func TestThrottle(t *testing.T) {
	b := &fakeBackend{}
	ex := New(Options{StateDir: t.TempDir()})
	// 1 MiB/s with a 1 MiB burst: 3 MiB take about 2 s.
	ex.SetTargets([]Target{{Name: "t", Backend: b, IOBytesPerSecond: 1 << 20}})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	r := ex.Run(ctx, Job{Target: "t"})
	if !strings.Contains(r.Error, "io throttle") {
		t.Fatalf("3 MiB at 1 MiB/s finished within 500ms: %+v", r)
	}
}

func TestSetTargetsKeepsAndRetires(t *testing.T) {
	keep, drop := &fakeBackend{}, &fakeBackend{hold: make(chan struct{})}
	ex := New(Options{StateDir: t.TempDir()})
	ex.SetTargets([]Target{{Name: "keep", Backend: keep}, {Name: "drop", Backend: drop}})
	done := make(chan backends.Report)
	go func() { done <- ex.Run(context.Background(), Job{Target: "drop"}) }()
	for drop.compacts.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ex.SetTargets([]Target{{Name: "keep", Backend: keep, IOBytesPerSecond: 0}})
	time.Sleep(20 * time.Millisecond)
	if drop.closed.Load() {
		t.Fatal("backend closed while its compaction runs")
	}
	close(drop.hold)
	<-done
	deadline := time.Now().Add(2 * time.Second)
	for !drop.closed.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !drop.closed.Load() || keep.closed.Load() {
		t.Fatalf("closed: drop %v keep %v", drop.closed.Load(), keep.closed.Load())
	}
	if got := ex.Targets(); len(got) != 1 || got[0] != "keep" {
		t.Fatalf("targets %v", got)
	}
}

func TestRecoverAll(t *testing.T) {
	b := &fakeBackend{}
	ex := newEx(t, t.TempDir(), b)
	if err := ex.Recover(context.Background()); err != nil || b.recovers.Load() != 1 {
		t.Fatalf("err %v recovers %d", err, b.recovers.Load())
	}
}

// TestSkipIsNotAFailure: a compaction the backend skipped (another node
// holds the target) is reported and counted as skipped, with no error, and
// is not followed by the requested scan (whose failure would make it one).
func TestSkipIsNotAFailure(t *testing.T) {
	b := &fakeBackend{skipped: "held by node-2", scanErr: errors.New("scan broke")}
	ex := newEx(t, t.TempDir(), b)
	m := NewMetrics("n1")
	m.InitTarget("t", "fake")
	ex.Subscribe(m.ObserveReport)
	r := ex.Run(context.Background(), Job{Target: "t", Trigger: "timer", Scan: true})
	if r.Error != "" || r.Skipped != "held by node-2" || Result(r) != ResultSkipped {
		t.Fatalf("report: error %q skipped %q result %s", r.Error, r.Skipped, Result(r))
	}
	if n := b.scans.Load(); n != 0 {
		t.Errorf("scanned %d times after a skip", n)
	}
	if got := value(t, m, "papyra_compactor_compactions_total", "target", "t", "backend", "fake",
		"trigger", "timer", "result", ResultSkipped); got != 1 {
		t.Errorf("compactions_total{result=skipped} = %v, want 1", got)
	}
	if got := value(t, m, "papyra_compactor_compaction_errors_total", "target", "t"); got != 0 {
		t.Errorf("compaction_errors_total = %v, want 0", got)
	}
}

// TestRedisLockHeldElsewhereIsASkip: end to end with a real Redis backend,
// a compaction lock another watcher holds makes a skipped report with no
// error, counted as skipped and not as a failure.
func TestRedisLockHeldElsewhereIsASkip(t *testing.T) {
	url := rtestutil.SharedRedis(t)
	prefix := rtestutil.UniquePrefix(t, url)
	b, err := redis.New(redis.Config{Name: "t", URL: url, Prefix: prefix, Node: "n1",
		CommandTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	lock := redis.LockKey(prefix, redis.DefaultSystemID)
	if err := b.Client().Set(ctx, lock, "node-2:0123456789abcdef", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	ex := newEx(t, t.TempDir(), b)
	m := NewMetrics("n1")
	m.InitTarget("t", backends.KindRedis)
	ex.Subscribe(m.ObserveReport)
	ret := backends.Retention{MaxRecords: backends.Int64(1)}
	ex.SetTargets([]Target{{Name: "t", Backend: b, Retention: ret}})
	r := ex.Run(ctx, Job{Target: "t", Trigger: "timer"})
	if r.Error != "" || r.Skipped != "held by node-2" {
		t.Fatalf("report: error %q skipped %q", r.Error, r.Skipped)
	}
	if got := value(t, m, "papyra_compactor_compactions_total", "target", "t", "backend", backends.KindRedis,
		"trigger", "timer", "result", ResultSkipped); got != 1 {
		t.Errorf("compactions_total{result=skipped} = %v, want 1", got)
	}
	if got := value(t, m, "papyra_compactor_compaction_errors_total", "target", "t"); got != 0 {
		t.Errorf("compaction_errors_total = %v, want 0", got)
	}
	// Once the other watcher's lock is gone, the compaction runs.
	b.Client().Del(ctx, lock)
	if r := ex.Run(ctx, Job{Target: "t", Trigger: "timer"}); r.Error != "" || r.Skipped != "" {
		t.Fatalf("after the lock is gone: error %q skipped %q", r.Error, r.Skipped)
	}
}
