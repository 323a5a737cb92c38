package triggers

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// diskFake is an injectable usage function: a settable percentage of a
// filesystem of total bytes (1000 GiB when 0; a multiple of 1000) and a
// count of queries per path; and whether the
// filesystem can collapse a range (by default it can, so that targets with
// method auto compact in place and are ordered by what they reclaim).
type diskFake struct {
	mu       sync.Mutex
	percent  float64
	calls    map[string]int
	copyOnly bool   // the filesystem cannot collapse a range
	total    uint64 // the filesystem's size; 0 is 1000 GiB
}

// options are the trigger's options with the fake's functions.
func (f *diskFake) options() DiskOptions {
	return DiskOptions{Usage: f.usage, CanCollapse: f.canCollapse}
}

func (f *diskFake) canCollapse(string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.copyOnly
}

func (f *diskFake) set(p float64) {
	f.mu.Lock()
	f.percent = p
	f.mu.Unlock()
}

func (f *diskFake) usage(path string) (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = make(map[string]int)
	}
	f.calls[path]++
	total := f.total
	if total == 0 {
		total = 1000 << 30
	}
	return uint64(f.percent*10) * (total / 1000), total, nil
}

func (f *diskFake) totalCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

// diskSettings are the test settings: sample every minute, 85/80.
func diskSettings(horizon time.Duration) DiskSettings {
	return DiskSettings{Interval: time.Minute, HighPercent: 85, LowPercent: 80, PredictHorizon: horizon}
}

// diskFileTarget makes a json target of size bytes in dir.
func diskFileTarget(t *testing.T, dir, name string, size int, s DiskSettings) Target {
	t.Helper()
	p := filepath.Join(dir, name+".ndjson")
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), size), 0o644); err != nil {
		t.Fatal(err)
	}
	return Target{Name: name, Backend: backends.KindJSON, Files: []string{p}, Disk: s}
}

// diskRun runs d in the bubble, collecting signals.
func diskRun(t *testing.T, d *Disk) (*timerRecorder, func()) {
	t.Helper()
	rec := &timerRecorder{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, rec.emit) }()
	synctest.Wait()
	return rec, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// diskStep advances virtual time by one minute and returns the signals.
func diskStep(rec *timerRecorder) []policy.Signal {
	time.Sleep(time.Minute)
	synctest.Wait()
	return rec.take()
}

func TestDiskHighEmitsUrgentOrderedByReclaimable(t *testing.T) {
	dir := t.TempDir()
	s := diskSettings(0)
	targets := []Target{
		diskFileTarget(t, dir, "small", 100, s),
		diskFileTarget(t, dir, "big", 1000, s),
		diskFileTarget(t, dir, "halved", 4000, s), // last report reclaimed half: 2000
		diskFileTarget(t, dir, "dense", 8000, s),  // last report reclaimed 1%: 80
	}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 50}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		d.Observe(backends.Report{Target: "halved", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(500)})
		d.Observe(backends.Report{Target: "dense", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(10)})
		// Ignored: dry run, failure.
		d.Observe(backends.Report{Target: "big", DryRun: true, BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(0)})
		d.Observe(backends.Report{Target: "big", Error: "x", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(0)})
		rec, stop := diskRun(t, d)
		defer stop()

		if got := rec.take(); len(got) != 0 {
			t.Fatalf("signal at 50%%: %+v", got)
		}
		fake.set(84.9)
		if got := diskStep(rec); len(got) != 0 {
			t.Fatalf("signal below high: %+v", got)
		}
		fake.set(85)
		got := diskStep(rec)
		if len(got) != 1 {
			t.Fatalf("want 1 signal at high, got %+v", got)
		}
		sig := got[0]
		if sig.Kind != policy.KindDisk || !sig.Urgent {
			t.Fatalf("want urgent disk signal, got %+v", sig)
		}
		want := []string{"halved", "big", "small", "dense"}
		if !slices.Equal(sig.Targets, want) {
			t.Fatalf("targets %v, want most reclaimable first %v", sig.Targets, want)
		}
		ps := d.Pressure()
		if len(ps) != 1 || !ps[0].UnderPressure || ps[0].NothingReclaimable || ps[0].UsedPercent != 85 || !slices.Equal(ps[0].Targets, want) {
			t.Fatalf("Pressure() = %+v", ps)
		}
		ratios := d.UsedRatios()
		if len(ratios) != 1 || ratios[ps[0].Mountpoint] != 0.85 {
			t.Fatalf("UsedRatios() = %v (mountpoint %q)", ratios, ps[0].Mountpoint)
		}
	})
}

func TestDiskHysteresis(t *testing.T) {
	dir := t.TempDir()
	targets := []Target{diskFileTarget(t, dir, "a", 1000, diskSettings(0))}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 90}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		rec, stop := diskRun(t, d)
		defer stop()
		if got := rec.take(); len(got) != 1 {
			t.Fatalf("want a signal at 90%% at start, got %d", len(got))
		}
		steps := []struct {
			percent float64
			fire    bool
		}{
			{90, true},    // still high: every interval
			{82, true},    // between low and high: still under pressure
			{80, true},    // at low: still under pressure (re-armed only below)
			{79.9, false}, // below low: relieved
			{84, false},   // between low and high again: not re-armed yet
			{82, false},
			{85, true}, // high again
			{81, true},
		}
		for i, st := range steps {
			fake.set(st.percent)
			got := diskStep(rec)
			if (len(got) == 1) != st.fire || len(got) > 1 {
				t.Fatalf("step %d at %v%%: fire=%v, got %d signals", i, st.percent, st.fire, len(got))
			}
			if p := d.Pressure(); p[0].UnderPressure != st.fire {
				t.Fatalf("step %d: UnderPressure=%v, want %v", i, p[0].UnderPressure, st.fire)
			}
		}
	})
}

func TestDiskNothingReclaimableLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	s := diskSettings(0)
	targets := []Target{diskFileTarget(t, dir, "a", 1000, s), diskFileTarget(t, dir, "b", 2000, s)}
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&diskSyncWriter{mu: &logMu, w: &logs}, nil))
	countNothing := func() int {
		logMu.Lock()
		defer logMu.Unlock()
		return strings.Count(logs.String(), "nothing left to reclaim")
	}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 95}
		d := NewDisk(targets, logger, fake.options())
		// A report from before the pressure began does not count.
		d.Observe(backends.Report{Target: "a", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(0)})
		rec, stop := diskRun(t, d)
		defer stop()
		if got := rec.take(); len(got) != 1 || !slices.Equal(got[0].Targets, []string{"b", "a"}) {
			t.Fatalf("want [b a] at start, got %+v", got)
		}
		// Compacting b reclaims nothing: only a is left.
		d.Observe(backends.Report{Target: "b", BeforeBytes: backends.Int64(2000), AfterBytes: backends.Int64(2000), ReclaimedBytes: backends.Int64(0)})
		if got := diskStep(rec); len(got) != 1 || !slices.Equal(got[0].Targets, []string{"a"}) {
			t.Fatalf("want [a] after b reclaimed nothing, got %+v", got)
		}
		// A failed compaction of a says nothing about what is reclaimable.
		d.Observe(backends.Report{Target: "a", Error: "busy"})
		if got := diskStep(rec); len(got) != 1 {
			t.Fatalf("a failed: still want a signal, got %+v", got)
		}
		// a reclaims 1 byte of 1000 (≤ 0.1%): about nothing.
		d.Observe(backends.Report{Target: "a", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(1)})
		for i := range 5 {
			if got := diskStep(rec); len(got) != 0 {
				t.Fatalf("tick %d: nothing reclaimable yet a signal: %+v", i, got)
			}
		}
		if n := countNothing(); n != 1 {
			t.Fatalf("nothing-reclaimable logged %d times, want once:\n%s", n, logs.String())
		}
		if !strings.Contains(logs.String(), "level=ERROR") {
			t.Fatalf("want an ERROR log, got:\n%s", logs.String())
		}
		ps := d.Pressure()
		if !ps[0].UnderPressure || !ps[0].NothingReclaimable {
			t.Fatalf("Pressure() = %+v, want nothing reclaimable", ps)
		}
		// Relief, then a new episode: targets are eligible again, and the
		// message may be logged once more.
		fake.set(50)
		diskStep(rec)
		if ps := d.Pressure(); ps[0].UnderPressure || ps[0].NothingReclaimable {
			t.Fatalf("after relief Pressure() = %+v", ps)
		}
		fake.set(90)
		if got := diskStep(rec); len(got) != 1 || len(got[0].Targets) != 2 {
			t.Fatalf("new episode: want both targets again, got %+v", got)
		}
		d.Observe(backends.Report{Target: "a", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(0)})
		d.Observe(backends.Report{Target: "b", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(0)})
		diskStep(rec)
		diskStep(rec)
		if n := countNothing(); n != 2 {
			t.Fatalf("second episode: logged %d times in all, want 2", n)
		}
	})
}

// diskSyncWriter serialises writes to a buffer shared with the test.
type diskSyncWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w *diskSyncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestDiskPrediction(t *testing.T) {
	dir := t.TempDir()
	// Usage rises 1% a minute from 70%. With a 10-minute horizon the trend
	// reaches 85% from 75% on; without, only 85% itself fires.
	firstFire := func(horizon time.Duration) (float64, bool) {
		var at float64
		var predicted bool
		targets := []Target{diskFileTarget(t, dir, "a", 1000, diskSettings(horizon))}
		synctest.Test(t, func(t *testing.T) {
			fake := &diskFake{percent: 70}
			d := NewDisk(targets, timerTestLogger(), fake.options())
			rec, stop := diskRun(t, d)
			defer stop()
			for p := 71.0; p <= 90; p++ {
				fake.set(p)
				if got := diskStep(rec); len(got) > 0 {
					at = p
					predicted = d.Pressure()[0].Predicted
					if !got[0].Urgent || got[0].Kind != policy.KindDisk {
						t.Errorf("bad signal %+v", got[0])
					}
					return
				}
			}
		})
		return at, predicted
	}
	at, predicted := firstFire(10 * time.Minute)
	if at != 75 || !predicted {
		t.Fatalf("horizon 10m: first signal at %v%% (predicted %v), want 75%% predicted", at, predicted)
	}
	at, predicted = firstFire(0)
	if at != 85 || predicted {
		t.Fatalf("horizon 0: first signal at %v%% (predicted %v), want 85%% not predicted", at, predicted)
	}

	// A flat or falling series never predicts.
	targets := []Target{diskFileTarget(t, dir, "a", 1000, diskSettings(time.Hour))}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 84}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		rec, stop := diskRun(t, d)
		defer stop()
		for _, p := range []float64{84, 84, 84, 83, 82, 84} {
			fake.set(p)
			if got := diskStep(rec); len(got) != 0 {
				t.Fatalf("flat series at %v%% fired: %+v", p, got)
			}
		}
	})
}

func TestDiskTrendSlope(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var ss []diskSample
	for i := range 5 {
		ss = append(ss, diskSample{t0.Add(time.Duration(i) * time.Minute), 50 + 2*float64(i)})
	}
	slope, ok := diskTrend(ss)
	if !ok || slope*60 < 1.999 || slope*60 > 2.001 {
		t.Fatalf("slope %v%%/min ok=%v, want 2", slope*60, ok)
	}
	if _, ok := diskTrend(ss[:2]); ok {
		t.Fatal("trend from 2 samples")
	}
}

func diskDev(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Dev)
}

func TestDiskGroupsByDevice(t *testing.T) {
	root := t.TempDir()
	d1, d2 := filepath.Join(root, "one"), filepath.Join(root, "two", "deeper")
	for _, d := range []string{d1, d2} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := diskSettings(0)
	targets := []Target{
		diskFileTarget(t, d1, "a", 10, s),
		diskFileTarget(t, d2, "b", 10, s),
		// Directory not created yet: it counts on its nearest ancestor's fs.
		{Name: "later", Backend: backends.KindRotating, Files: []string{filepath.Join(root, "missing", "x.ndjson"), filepath.Join(root, "missing", "x.ndjson.1")}, Disk: s},
		// Not a file target, or disk trigger off: ignored.
		{Name: "redis", Backend: backends.KindRedis, RedisURL: "redis://x", Disk: s},
		diskFileTarget(t, d1, "off", 10, DiskSettings{}),
		diskFileTarget(t, d1, "nohigh", 10, DiskSettings{Interval: time.Minute}),
	}
	// A second filesystem, if this machine has one at hand.
	var other string
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && diskDev(t, "/dev/shm") != diskDev(t, root) {
		if dir, err := os.MkdirTemp("/dev/shm", "disk-test-"); err == nil {
			other = dir
			t.Cleanup(func() { os.RemoveAll(dir) })
			targets = append(targets, diskFileTarget(t, other, "shm", 10, s))
		}
	}
	wantGroups := 1
	if other != "" {
		wantGroups = 2
	}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 90}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		rec, stop := diskRun(t, d)
		defer stop()
		if n := fake.totalCalls(); n != wantGroups {
			t.Fatalf("first tick: %d usage queries, want %d (one per filesystem): %v", n, wantGroups, fake.calls)
		}
		got := rec.take()
		if len(got) != wantGroups {
			t.Fatalf("want %d signals (one per filesystem), got %+v", wantGroups, got)
		}
		var names []string
		for _, s := range got {
			names = append(names, s.Targets...)
		}
		slices.Sort(names)
		want := []string{"a", "b"} // "later" has nothing to reclaim (size 0)
		if other != "" {
			want = append(want, "shm")
		}
		if !slices.Equal(names, want) {
			t.Fatalf("signalled targets %v, want %v", names, want)
		}
		diskStep(rec)
		if n := fake.totalCalls(); n != 2*wantGroups {
			t.Fatalf("second tick: %d usage queries in all, want %d", n, 2*wantGroups)
		}
		ps := d.Pressure()
		if len(ps) != wantGroups {
			t.Fatalf("Pressure() = %+v", ps)
		}
		for _, p := range ps {
			if p.Device == diskDev(t, root) {
				if !strings.HasPrefix(root, p.Mountpoint) || diskDev(t, p.Mountpoint) != p.Device {
					t.Fatalf("mountpoint %q of %q has the wrong device", p.Mountpoint, root)
				}
				for _, n := range []string{"a", "b", "later"} {
					if !slices.Contains(p.Targets, n) {
						t.Fatalf("target %s missing from %+v", n, p)
					}
				}
			}
		}
		// SetTargets: drop everything but a.
		d.SetTargets(targets[:1])
		synctest.Wait()
		got = diskStep(rec)
		if len(got) != 1 || !slices.Equal(got[0].Targets, []string{"a"}) {
			t.Fatalf("after SetTargets want [a], got %+v", got)
		}
	})
}

func TestDiskRealUsage(t *testing.T) {
	used, total, err := diskGopsutilUsage(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 || used > total {
		t.Fatalf("used %d of %d", used, total)
	}
	mp := diskMountpoint(t.TempDir(), diskDev(t, t.TempDir()))
	if mp == "" || !filepath.IsAbs(mp) {
		t.Fatalf("mountpoint %q", mp)
	}
}

func TestDiskEstimate(t *testing.T) {
	cases := []struct {
		size int64
		dt   diskTarget
		want int64
	}{
		{1000, diskTarget{after: -1}, 1000},                             // no report: all of it
		{1000, diskTarget{hasRatio: true, ratio: 0.25, after: -1}, 250}, // ratio only
		{1000, diskTarget{hasRatio: true, ratio: 0, after: 400}, 600},   // grew 600 since
		{1000, diskTarget{hasRatio: true, ratio: 0.9, after: 400}, 900}, // ratio says more
		{300, diskTarget{hasRatio: true, ratio: 0, after: 400}, 0},      // shrank since
	}
	for i, c := range cases {
		if got := diskEstimate(c.size, &c.dt); got != c.want {
			t.Errorf("case %d: estimate %d, want %d", i, got, c.want)
		}
	}
}

// TestDiskOrdersByRetentionEstimate: with the retention trigger's estimates
// set, targets under pressure are ordered by what their retention would
// remove now, not by their size or last compaction's ratio, and a target
// with about nothing reclaimable (at most 0.1 % of its bytes) is left out.
// When every target is left out, nothing is signalled.
func TestDiskOrdersByRetentionEstimate(t *testing.T) {
	dir := t.TempDir()
	s := diskSettings(0)
	targets := []Target{
		diskFileTarget(t, dir, "big_nothing", 8000, s),  // estimate: 0 reclaimable
		diskFileTarget(t, dir, "big_crumb", 4000, s),    // estimate: 4 of 4000 (0.1 %): about nothing
		diskFileTarget(t, dir, "small_much", 1000, s),   // estimate: 900
		diskFileTarget(t, dir, "mid_some", 2000, s),     // estimate: 300
		diskFileTarget(t, dir, "unestimated", 500, s),   // no estimate: its size
		diskFileTarget(t, dir, "history_rich", 3000, s), // last compaction reclaimed 90 %, estimate says 5 bytes
	}
	var mu sync.Mutex
	ests := map[string]backends.Estimate{
		"big_nothing":  {Bytes: 8000, Records: 80, ReclaimableBytes: 0},
		"big_crumb":    {Bytes: 4000, Records: 40, ReclaimableBytes: 4, ReclaimableRecords: 1},
		"small_much":   {Bytes: 1000, Records: 10, ReclaimableBytes: 900, ReclaimableRecords: 9},
		"mid_some":     {Bytes: 2000, Records: 20, ReclaimableBytes: 300, ReclaimableRecords: 3},
		"history_rich": {Bytes: 3000, Records: 30, ReclaimableBytes: 5, ReclaimableRecords: 1},
	}
	estimates := func() map[string]backends.Estimate {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(ests)
	}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 50}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		d.Observe(backends.Report{Target: "history_rich", BeforeBytes: backends.Int64(1000), ReclaimedBytes: backends.Int64(900)})
		d.SetEstimates(estimates)
		rec, stop := diskRun(t, d)
		defer stop()

		fake.set(90)
		got := diskStep(rec)
		if len(got) != 1 {
			t.Fatalf("want one signal under pressure, got %+v", got)
		}
		want := []string{"small_much", "unestimated", "mid_some", "history_rich"}
		if !slices.Equal(got[0].Targets, want) {
			t.Fatalf("targets %v, want by estimate, about-nothing left out: %v", got[0].Targets, want)
		}

		// The estimates change (a compaction ran, records expired): the
		// order follows at the next sample.
		mu.Lock()
		ests["big_nothing"] = backends.Estimate{Bytes: 8000, Records: 80, ReclaimableBytes: 7000, ReclaimableRecords: 70}
		ests["small_much"] = backends.Estimate{Bytes: 1000, Records: 10, ReclaimableBytes: 0}
		mu.Unlock()
		got = diskStep(rec)
		want = []string{"big_nothing", "unestimated", "mid_some", "history_rich"}
		if len(got) != 1 || !slices.Equal(got[0].Targets, want) {
			t.Fatalf("after the estimates changed: got %+v, want targets %v", got, want)
		}

		// Every estimate about nothing, and the unestimated target exhausted:
		// no signal.
		mu.Lock()
		for name, e := range ests {
			e.ReclaimableBytes, e.ReclaimableRecords = 0, 0
			ests[name] = e
		}
		mu.Unlock()
		d.Observe(backends.Report{Target: "unestimated", BeforeBytes: backends.Int64(500), ReclaimedBytes: backends.Int64(0)})
		if got := diskStep(rec); len(got) != 0 {
			t.Fatalf("nothing reclaimable anywhere, yet signalled: %+v", got)
		}
		if ps := d.Pressure(); len(ps) != 1 || !ps[0].NothingReclaimable {
			t.Fatalf("Pressure() = %+v, want nothing reclaimable", ps)
		}
	})
}

// TestDiskStaleEstimateIsNotNothing: an estimate made when the target was
// smaller (the retention trigger refreshes it only every interval) does not
// make a target that has grown since look like it has nothing to give: it
// is compacted under pressure on its size, as an unestimated target is.
func TestDiskStaleEstimateIsNotNothing(t *testing.T) {
	dir := t.TempDir()
	s := diskSettings(0)
	targets := []Target{diskFileTarget(t, dir, "grown", 8000, s)}
	estimates := func() map[string]backends.Estimate {
		return map[string]backends.Estimate{"grown": {Bytes: 100, Records: 1, ReclaimableBytes: 0}}
	}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 50}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		d.SetEstimates(estimates)
		rec, stop := diskRun(t, d)
		defer stop()
		fake.set(90)
		got := diskStep(rec)
		if len(got) != 1 || !slices.Equal(got[0].Targets, []string{"grown"}) {
			t.Fatalf("a target grown since its estimate: got %+v, want one signal for it", got)
		}
	})
}
