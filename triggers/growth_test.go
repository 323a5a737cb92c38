package triggers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/goleak"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// growthDeadline bounds every wait for something that must happen. Real
// file events on a busy 2-core machine: generous.
const growthDeadline = 10 * time.Second

// growthHarness runs a Growth with real files and records what it does.
type growthHarness struct {
	t  *testing.T
	g  *Growth
	mu sync.Mutex
	// sigs and evals in order; reconciles counts watch reconciliations.
	sigs       []policy.Signal
	evals      []growthEvaluated
	reconciles int
	logs       bytes.Buffer
	cancel     context.CancelFunc
	done       chan error
}

// growthStart runs a Growth over targets with fast test timings. setup, if
// set, adjusts the Growth before Run.
func growthStart(t *testing.T, targets []Target, opts GrowthOptions, setup func(*Growth)) *growthHarness {
	t.Helper()
	h := &growthHarness{t: t, done: make(chan error, 1)}
	if opts.PollInterval == 0 {
		opts.PollInterval = 50 * time.Millisecond
	}
	if opts.Coalesce == 0 {
		opts.Coalesce = 10 * time.Millisecond
	}
	logger := slog.New(slog.NewTextHandler(&diskSyncWriter{mu: &h.mu, w: &h.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.g = NewGrowth(targets, logger, opts)
	h.g.hookEval = func(name string, size int64, fired bool) {
		h.mu.Lock()
		h.evals = append(h.evals, growthEvaluated{name, size, fired})
		h.mu.Unlock()
	}
	h.g.hookReconcile = func() {
		h.mu.Lock()
		h.reconciles++
		h.mu.Unlock()
	}
	if setup != nil {
		setup(h.g)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.done <- h.g.Run(ctx, func(s policy.Signal) {
			h.mu.Lock()
			h.sigs = append(h.sigs, s)
			h.mu.Unlock()
		})
	}()
	t.Cleanup(h.stop)
	// Ready once every target has its baseline (taken after the watches).
	h.waitFor("initial baselines", func() bool {
		for _, tg := range targets {
			if !h.evaluatedLocked(tg.Name) {
				return false
			}
		}
		return true
	})
	return h
}

func (h *growthHarness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(growthDeadline):
		h.t.Error("Run did not return after cancel")
	}
}

func (h *growthHarness) evaluatedLocked(name string) bool {
	for _, e := range h.evals {
		if e.name == name {
			return true
		}
	}
	return false
}

// waitFor polls cond (called with h.mu held) until it holds or the deadline
// passes.
func (h *growthHarness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(growthDeadline)
	for {
		h.mu.Lock()
		ok := cond()
		h.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.t.Fatalf("timed out waiting for %s; evals %+v signals %+v\nlogs:\n%s", what, h.evals, h.sigs, h.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitSize waits until target name was evaluated at size; it returns the
// index after that evaluation.
func (h *growthHarness) waitSize(name string, size int64) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("%s evaluated at %d bytes", name, size), func() bool {
		for _, e := range h.evals {
			if e.name == name && e.size == size {
				return true
			}
		}
		return false
	})
}

// clearEvals forgets the evaluations so far.
func (h *growthHarness) clearEvals() {
	h.mu.Lock()
	h.evals = nil
	h.mu.Unlock()
}

func (h *growthHarness) signals(name string) []policy.Signal {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []policy.Signal
	for _, s := range h.sigs {
		if slices.Contains(s.Targets, name) {
			out = append(out, s)
		}
	}
	return out
}

func (h *growthHarness) waitSignals(name string, n int) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("%d signals for %s", n, name), func() bool {
		c := 0
		for _, s := range h.sigs {
			if slices.Contains(s.Targets, name) {
				c++
			}
		}
		return c >= n
	})
}

func (h *growthHarness) log() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.logs.String()
}

// growthAppend appends n bytes to path (creating it) and returns its size.
func growthAppend(t *testing.T, path string, n int) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(bytes.Repeat([]byte("x"), n)); err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func growthTestTarget(name string, minBytes int64, minRatio float64, files ...string) Target {
	kind := backends.KindJSON
	if len(files) > 1 {
		kind = backends.KindRotating
	}
	return Target{Name: name, Backend: kind, Files: files, Growth: GrowthSettings{MinBytes: minBytes, MinRatio: minRatio}}
}

func TestGrowthFiresOnceAboveThreshold(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	growthAppend(t, p, 100)
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 0, p)}, GrowthOptions{}, nil)
	h.waitSize("ev", 100)

	h.waitSize("ev", growthAppend(t, p, 500)) // grown 500 < 1000
	if s := h.signals("ev"); len(s) != 0 {
		t.Fatalf("fired below min_bytes: %+v", s)
	}
	h.waitSize("ev", growthAppend(t, p, 500)) // grown exactly 1000
	h.waitSignals("ev", 1)
	s := h.signals("ev")[0]
	if s.Kind != policy.KindGrowth || s.Urgent || !slices.Equal(s.Targets, []string{"ev"}) || s.Reason == "" {
		t.Fatalf("bad signal %+v", s)
	}
	// More growth without a compaction: still one signal.
	for range 3 {
		h.waitSize("ev", growthAppend(t, p, 2000))
	}
	if s := h.signals("ev"); len(s) != 1 {
		t.Fatalf("want exactly 1 signal for one growth, got %d", len(s))
	}
	st := h.g.Status()
	if len(st) != 1 || !st[0].Fired || st[0].Baseline != 100 || st[0].Bytes != 7100 || st[0].Polling {
		t.Fatalf("Status() = %+v", st)
	}
}

func TestGrowthRatioRule(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	growthAppend(t, p, 10000)
	h := growthStart(t, []Target{growthTestTarget("ev", 100, 1.0, p)}, GrowthOptions{}, nil)
	h.waitSize("ev", 10000)
	h.waitSize("ev", growthAppend(t, p, 5000)) // ≥ min_bytes, < 1.0 × 10000
	h.waitSize("ev", growthAppend(t, p, 4999))
	if s := h.signals("ev"); len(s) != 0 {
		t.Fatalf("fired below min_ratio: %+v", s)
	}
	h.waitSize("ev", growthAppend(t, p, 1)) // grown 10000 = 1.0 × 10000
	h.waitSignals("ev", 1)
}

// growthCompact imitates a compaction: the file is replaced through a
// temporary file with the watcher's marker, then renamed into place.
func growthCompact(t *testing.T, path string, keep int) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".watcher-tmp-0123456789abcdef")
	if err := os.WriteFile(tmp, bytes.Repeat([]byte("k"), keep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestGrowthObserveResetsBaseline(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 1.0, p)}, GrowthOptions{RetryBackoff: 50 * time.Millisecond}, nil)
	h.waitSize("ev", 0)
	h.waitSize("ev", growthAppend(t, p, 5000))
	h.waitSignals("ev", 1)

	// Our compaction: down to 1500 bytes, then the report.
	growthCompact(t, p, 1500)
	h.waitSize("ev", 1500)
	h.g.Observe(backends.Report{Target: "ev", DryRun: true, AfterBytes: backends.Int64(0)}) // ignored
	h.g.Observe(backends.Report{Target: "ev", BeforeBytes: backends.Int64(5000), AfterBytes: backends.Int64(1500)})
	if st := h.g.Status()[0]; st.Baseline != 1500 || st.Fired {
		t.Fatalf("after the report Status() = %+v, want baseline 1500 not fired", st)
	}
	// 1000 more: ≥ min_bytes but < 1.0 × 1500.
	h.waitSize("ev", growthAppend(t, p, 1000))
	if n := len(h.signals("ev")); n != 1 {
		t.Fatalf("fired below the new baseline's ratio: %d signals", n)
	}
	h.waitSize("ev", growthAppend(t, p, 500)) // grown 1500
	h.waitSignals("ev", 2)

	// A report without AfterBytes: the baseline is measured.
	h.g.Observe(backends.Report{Target: "ev"})
	h.waitFor("baseline measured", func() bool {
		h.g.mu.Lock()
		defer h.g.mu.Unlock()
		return h.g.targets["ev"].hasBaseline && !h.g.targets["ev"].fired
	})
	if st := h.g.Status()[0]; st.Baseline != 3000 {
		t.Fatalf("baseline %d, want the measured 3000", st.Baseline)
	}
	h.waitSize("ev", growthAppend(t, p, 3000))
	h.waitSignals("ev", 3)

	// A failed compaction: the growth fires again after the back-off, with
	// no new write needed.
	h.g.Observe(backends.Report{Target: "ev", Error: "target is busy"})
	h.waitSignals("ev", 4)
	// Skipped: the same.
	h.g.Observe(backends.Report{Target: "ev", Skipped: "held by node-2"})
	h.waitSignals("ev", 5)
	// A failure report for a target that did not fire re-arms nothing.
	h.g.Observe(backends.Report{Target: "ev", BeforeBytes: backends.Int64(6000), AfterBytes: backends.Int64(6000)})
	h.g.Observe(backends.Report{Target: "ev", Error: "boom"})
	h.g.mu.Lock()
	pending := h.g.targets["ev"].retryPending
	h.g.mu.Unlock()
	if st := h.g.Status()[0]; st.Fired || pending {
		t.Fatalf("unexpected state after a failure without firing: %+v", st)
	}
}

func TestGrowthRetryBackoffDoubles(t *testing.T) {
	g := NewGrowth([]Target{growthTestTarget("ev", 1, 0, "/nonexistent/x")}, timerTestLogger(),
		GrowthOptions{RetryBackoff: time.Minute, RetryBackoffMax: 5 * time.Minute})
	var got []time.Duration
	for range 5 {
		g.targets["ev"].fired = true
		before := time.Now()
		g.Observe(backends.Report{Target: "ev", Error: "x"})
		got = append(got, g.targets["ev"].retryAt.Sub(before).Round(time.Minute))
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	if !slices.Equal(got, want) {
		t.Fatalf("back-offs %v, want %v", got, want)
	}
	g.Observe(backends.Report{Target: "ev"})
	if gt := g.targets["ev"]; gt.failures != 0 || gt.retryPending {
		t.Fatalf("success did not reset the back-off: %+v", gt)
	}
}

func TestGrowthRotatingSumsFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.ndjson")
	files := []string{p, p + ".1", p + ".2"}
	growthAppend(t, files[1], 600)
	h := growthStart(t, []Target{growthTestTarget("au", 1000, 1.0, files...)}, GrowthOptions{}, nil)
	h.waitSize("au", 600)
	h.waitSize("au", 600+growthAppend(t, p, 700)) // grown 700
	if n := len(h.signals("au")); n != 0 {
		t.Fatalf("fired at 700 grown")
	}
	// Rotation: .1 → .2, active → .1, new active: sum 600+700+400.
	if err := os.Rename(files[1], files[2]); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p, files[1]); err != nil {
		t.Fatal(err)
	}
	h.waitSize("au", 1300+growthAppend(t, p, 400)) // grown 1100, no single file above 1000
	h.waitSignals("au", 1)
	if st := h.g.Status()[0]; st.Bytes != 1700 {
		t.Fatalf("Status bytes %d, want the sum 1700", st.Bytes)
	}
}

func TestGrowthFileCreatedLater(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "dead_letters.ndjson")
	h := growthStart(t, []Target{growthTestTarget("dl", 1000, 1.0, p)}, GrowthOptions{}, nil)
	h.waitSize("dl", 0)
	h.waitSize("dl", growthAppend(t, p, 999))
	if n := len(h.signals("dl")); n != 0 {
		t.Fatal("fired below min_bytes")
	}
	growthAppend(t, p, 1)
	h.waitSignals("dl", 1)
}

func TestGrowthDirectoryDeletedAndRecreated(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(sub, "events.ndjson")
	growthAppend(t, p, 500)
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 0, p)}, GrowthOptions{PollInterval: time.Hour}, nil)
	h.waitSize("ev", 500)

	// The directory goes and comes back.
	h.mu.Lock()
	before0 := h.reconciles
	h.mu.Unlock()
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	h.waitSize("ev", 0)
	h.waitFor("watch on the parent", func() bool { return h.reconciles > before0 })
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	h.waitSize("ev", growthAppend(t, p, 999))
	if n := len(h.signals("ev")); n != 0 {
		t.Fatalf("fired below threshold after recreation")
	}
	growthAppend(t, p, 1)
	h.waitSignals("ev", 1)

	// Two levels go: found again through the nearest ancestor (the poll is
	// an hour, so this is the inotify path).
	h.g.Observe(backends.Report{Target: "ev", AfterBytes: backends.Int64(1000)})
	h.clearEvals()
	h.mu.Lock()
	before := h.reconciles
	h.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(root, "a")); err != nil {
		t.Fatal(err)
	}
	h.waitSize("ev", 0)
	h.waitFor("watch on the ancestor", func() bool { return h.reconciles > before })
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	growthAppend(t, p, 1000)
	h.waitSignals("ev", 2)
}

func TestGrowthIgnoresOwnTempAndUnrelatedFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	growthAppend(t, p, 100)
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 0, p)}, GrowthOptions{}, nil)
	h.waitSize("ev", 100)
	h.clearEvals()

	tmp := filepath.Join(dir, ".events.ndjson.watcher-tmp-abcdef")
	growthAppend(t, tmp, 5000)
	growthAppend(t, filepath.Join(dir, "other.log"), 5000)
	growthAppend(t, filepath.Join(dir, "events.ndjson.bak"), 5000)
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	// The next real change is the first evaluation since: nothing above
	// caused a stat of the target.
	size := growthAppend(t, p, 10)
	h.waitSize("ev", size)
	h.mu.Lock()
	evals := slices.Clone(h.evals)
	h.mu.Unlock()
	for _, e := range evals {
		if e.size != size {
			t.Fatalf("target measured because of an unrelated file: %+v", evals)
		}
	}
	if n := len(h.signals("ev")); n != 0 {
		t.Fatal("unrelated files fired the target")
	}
}

func TestGrowthCoalescesEventStorms(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	h := growthStart(t, []Target{growthTestTarget("ev", 1<<40, 0, p)}, GrowthOptions{Coalesce: 200 * time.Millisecond}, nil)
	h.waitSize("ev", 0)
	h.clearEvals()
	start := time.Now()
	var size int64
	for range 200 {
		size = growthAppend(t, p, 10)
	}
	h.waitSize("ev", size)
	elapsed := time.Since(start)
	h.mu.Lock()
	n := len(h.evals)
	h.mu.Unlock()
	// At most one stat per coalescing period, plus the leading one.
	if limit := int(elapsed/(200*time.Millisecond)) + 2; n > limit {
		t.Fatalf("%d stats in %s for 200 writes, want at most %d", n, elapsed, limit)
	}
}

func TestGrowthPollingFallbackOnWatchLimit(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	var limited atomic.Bool
	limited.Store(true)
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 0, p)}, GrowthOptions{}, func(g *Growth) {
		g.addWatch = func(w *fsnotify.Watcher, dir string) error {
			if limited.Load() {
				return syscall.ENOSPC
			}
			return w.Add(dir)
		}
	})
	h.waitSize("ev", 0)
	if st := h.g.Status()[0]; !st.Polling {
		t.Fatalf("want polling after ENOSPC, Status() = %+v", st)
	}
	logs := h.log()
	if !strings.Contains(logs, "fs.inotify.max_user_watches") || !strings.Contains(logs, "level=ERROR") {
		t.Fatalf("log does not name the sysctl at error level:\n%s", logs)
	}
	growthAppend(t, p, 1000)
	h.waitSignals("ev", 1)

	// The operator raised the limit and reloads: watched again.
	limited.Store(false)
	h.g.SetTargets([]Target{growthTestTarget("ev", 1000, 0, p)})
	h.waitFor("watched after reload", func() bool { return !h.g.Status()[0].Polling })
	h.g.Observe(backends.Report{Target: "ev", AfterBytes: backends.Int64(1000)})
	growthAppend(t, p, 1000)
	h.waitSignals("ev", 2)
}

func TestGrowthForcePolling(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 0, p)}, GrowthOptions{ForcePolling: true}, func(g *Growth) {
		g.addWatch = func(*fsnotify.Watcher, string) error { return errors.New("must not be called") }
	})
	if st := h.g.Status()[0]; !st.Polling {
		t.Fatalf("Status() = %+v, want polling", st)
	}
	growthAppend(t, p, 1000)
	h.waitSignals("ev", 1)
}

func TestGrowthWatchErrorClassification(t *testing.T) {
	err := growthWatchError("watch", "/data", syscall.ENOSPC)
	if !errors.Is(err, ErrWatchLimit) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("ENOSPC not classified: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "fs.inotify.max_user_watches") || !strings.Contains(msg, "/data") {
		t.Fatalf("message %q does not name the sysctl and the dir", msg)
	}
	// As fsnotify returns it from NewWatcher.
	err = growthWatchError("inotify", "", fmt.Errorf("couldn't initialize inotify: %w", syscall.EMFILE))
	if !errors.Is(err, ErrWatchLimit) || !strings.Contains(err.Error(), "fs.inotify.max_user_instances") {
		t.Fatalf("EMFILE on NewWatcher: %v", err)
	}
	err = growthWatchError("watch", "/data", syscall.EACCES)
	if errors.Is(err, ErrWatchLimit) || !errors.Is(err, syscall.EACCES) || strings.Contains(err.Error(), "sysctl") {
		t.Fatalf("EACCES misclassified: %v", err)
	}
}

func TestGrowthSetTargetsAddsAndRemoves(t *testing.T) {
	d1, d2 := t.TempDir(), t.TempDir()
	pa, pb := filepath.Join(d1, "a.ndjson"), filepath.Join(d2, "b.ndjson")
	a := growthTestTarget("a", 1000, 0, pa)
	h := growthStart(t, []Target{a}, GrowthOptions{}, nil)
	h.waitSize("a", 0)

	growthAppend(t, pb, 300)
	h.g.SetTargets([]Target{a, growthTestTarget("b", 1000, 0, pb)})
	h.waitSize("b", 300) // baseline of a target added at runtime
	growthAppend(t, pb, 1000)
	h.waitSignals("b", 1)

	// Remove a; its directory is no longer watched.
	h.g.SetTargets([]Target{growthTestTarget("b", 1000, 0, pb)})
	h.waitFor("reconcile after removal", func() bool { return h.reconciles >= 3 })
	h.clearEvals()
	growthAppend(t, pa, 5000)
	size := growthAppend(t, pb, 1)
	h.waitSize("b", size) // events are queued in order: a's would be first
	h.mu.Lock()
	for _, e := range h.evals {
		if e.name == "a" {
			h.mu.Unlock()
			t.Fatalf("removed target evaluated: %+v", e)
		}
	}
	h.mu.Unlock()
	if n := len(h.signals("a")); n != 0 {
		t.Fatal("removed target fired")
	}

	// Changed thresholds keep the baseline and are evaluated at once.
	h.g.SetTargets([]Target{growthTestTarget("b", 100, 0, pb)})
	h.g.Observe(backends.Report{Target: "b", AfterBytes: backends.Int64(1200)})
	h.g.SetTargets([]Target{growthTestTarget("b", 50, 0, pb)})
	h.waitSignals("b", 2)
	if st := h.g.Status(); len(st) != 1 || st[0].Baseline != 1200 {
		t.Fatalf("Status() = %+v", st)
	}
}

func TestGrowthPollingFallbackOnInstanceLimit(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "events.ndjson")
	h := growthStart(t, []Target{growthTestTarget("ev", 1000, 0, p)}, GrowthOptions{}, func(g *Growth) {
		g.newWatcher = func() (*fsnotify.Watcher, error) {
			return nil, fmt.Errorf("couldn't initialize inotify: %w", syscall.EMFILE)
		}
	})
	if st := h.g.Status()[0]; !st.Polling {
		t.Fatalf("Status() = %+v, want polling", st)
	}
	if logs := h.log(); !strings.Contains(logs, "fs.inotify.max_user_instances") || !strings.Contains(logs, "level=ERROR") {
		t.Fatalf("log does not name the sysctl at error level:\n%s", logs)
	}
	growthAppend(t, p, 1000)
	h.waitSignals("ev", 1)
}

func TestGrowthDiskTimerNoGoroutineLeak(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	tg := growthTestTarget("ev", 1000, 0, filepath.Join(dir, "x.ndjson"), filepath.Join(dir, "missing", "x.ndjson"))
	tg.Disk = diskSettings(time.Hour)
	tg.Timer = TimerSettings{Interval: time.Hour}
	h := growthStart(t, []Target{tg}, GrowthOptions{}, nil)
	h.stop()
	for _, src := range []Source{NewDisk([]Target{tg}, timerTestLogger()), NewTimer([]Target{tg}, timerTestLogger())} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx, func(policy.Signal) {}) }()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
