package triggers

import (
	"bytes"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/papyra/watcher/backends"
)

// diskSizedTarget makes a target of size bytes (a sparse file) with method
// in dir.
func diskSizedTarget(t *testing.T, dir, name string, size int64, method string, s DiskSettings) Target {
	t.Helper()
	p := filepath.Join(dir, name+".ndjson")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return Target{Name: name, Backend: backends.KindJSON, Files: []string{p}, Method: method, Disk: s}
}

// diskEstimates is a settable estimates source: name → (size, reclaimable).
type diskEstimates struct {
	mu sync.Mutex
	m  map[string]backends.Estimate
}

func (e *diskEstimates) set(name string, size, reclaimable int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]backends.Estimate{}
	}
	e.m[name] = backends.Estimate{Bytes: size, ReclaimableBytes: reclaimable}
}

func (e *diskEstimates) get() map[string]backends.Estimate {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.m)
}

// TestDiskOrderInPlaceFirstThenFewestSurvivors: under pressure the targets
// that compact in place (method auto on a filesystem that can collapse a
// range) come first, most reclaimable first; then those that copy, fewest
// survivors (size less reclaimable) first, so that each copy frees room for
// the next. On a filesystem that cannot collapse, every target copies.
func TestDiskOrderInPlaceFirstThenFewestSurvivors(t *testing.T) {
	dir := t.TempDir()
	s := diskSettings(0)
	type tc struct {
		name        string
		method      string
		size, recl  int64
		description string
	}
	cases := []tc{
		{"copy_many_survivors", backends.MethodCopy, 8000, 1000, "survivors 7000"},
		{"auto_little", backends.MethodAuto, 4000, 500, "in place, reclaims 500; survivors 3500"},
		{"copy_few_survivors", backends.MethodCopy, 3000, 2900, "survivors 100"},
		{"auto_much", "", 2000, 1500, "in place (empty is auto), reclaims 1500; survivors 500"},
		{"copy_some_survivors", backends.MethodCopy, 5000, 4000, "survivors 1000"},
		{"copy_tie", backends.MethodCopy, 1100, 100, "survivors 1000 like copy_some_survivors, reclaims less"},
	}
	var targets []Target
	ests := &diskEstimates{}
	for _, c := range cases {
		targets = append(targets, diskSizedTarget(t, dir, c.name, c.size, c.method, s))
		ests.set(c.name, c.size, c.recl)
	}
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 50}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		d.SetEstimates(ests.get)
		rec, stop := diskRun(t, d)
		defer stop()

		fake.set(90)
		got := diskStep(rec)
		want := []string{"auto_much", "auto_little", "copy_few_survivors", "copy_some_survivors", "copy_tie", "copy_many_survivors"}
		if len(got) != 1 || !slices.Equal(got[0].Targets, want) {
			t.Fatalf("on a filesystem that can collapse: got %+v, want targets %v", got, want)
		}
		if ps := d.Pressure(); len(ps) != 1 || !slices.Equal(ps[0].Targets, want) {
			t.Fatalf("Pressure() = %+v, want targets in the order compacted %v", ps, want)
		}

		// A filesystem that cannot collapse (tmpfs, btrfs): everything
		// copies, fewest survivors first.
		fake.mu.Lock()
		fake.copyOnly = true
		fake.mu.Unlock()
		got = diskStep(rec)
		want = []string{"copy_few_survivors", "auto_much", "copy_some_survivors", "copy_tie", "auto_little", "copy_many_survivors"}
		if len(got) != 1 || !slices.Equal(got[0].Targets, want) {
			t.Fatalf("on a filesystem that cannot collapse: got %+v, want targets %v", got, want)
		}
	})
}

// TestDiskCopiesWaitForRoom: a target whose copy (survivors and margin)
// does not fit the free space is left out, with one log line saying why,
// while the others (in place, or copies that fit) are signalled; once they
// have freed room it is signalled again, with a line saying so. When no
// target's compaction fits, nothing is signalled and an error is logged
// once per episode.
func TestDiskCopiesWaitForRoom(t *testing.T) {
	const mib = 1 << 20
	dir := t.TempDir()
	s := diskSettings(0) // high 85, low 80
	targets := []Target{
		diskSizedTarget(t, dir, "too_big", 40*mib, backends.MethodCopy, s),    // survivors 20 MiB
		diskSizedTarget(t, dir, "in_place", 30*mib, backends.MethodAuto, s),   // survivors 25 MiB, needs no room
		diskSizedTarget(t, dir, "fits_small", 20*mib, backends.MethodCopy, s), // survivors 2 MiB
	}
	ests := &diskEstimates{}
	ests.set("too_big", 40*mib, 20*mib)
	ests.set("in_place", 30*mib, 5*mib)
	ests.set("fits_small", 20*mib, 18*mib)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&diskSyncWriter{mu: &logMu, w: &logs}, nil))
	count := func(s string) int {
		logMu.Lock()
		defer logMu.Unlock()
		return strings.Count(logs.String(), s)
	}
	const leftOut, fitsAgain, noneFits = "left out until others free room", "fits the free space again", "no compaction fits"
	synctest.Test(t, func(t *testing.T) {
		// 125 MiB: each percent is 1.25 MiB. At 90 % 12.5 MiB are free.
		fake := &diskFake{percent: 50, total: 1000 << 17}
		d := NewDisk(targets, logger, fake.options())
		d.SetEstimates(ests.get)
		rec, stop := diskRun(t, d)
		defer stop()

		fake.set(90)
		got := diskStep(rec)
		if len(got) != 1 || !slices.Equal(got[0].Targets, []string{"in_place", "fits_small"}) {
			t.Fatalf("at 12.5 MiB free: got %+v, want [in_place fits_small] (too_big's 20 MiB copy waits)", got)
		}
		if n := count(leftOut); n != 1 || count("target=too_big") != 1 || count("survivors_bytes=20971520") != 1 {
			t.Fatalf("want one line saying too_big is left out and why, got:\n%s", logs.String())
		}
		if ps := d.Pressure(); !slices.Equal(ps[0].Targets, []string{"in_place", "fits_small", "too_big"}) || ps[0].NothingReclaimable {
			t.Fatalf("Pressure() = %+v", ps)
		}
		// Still no room: still left out, not logged again.
		fake.set(84) // 20 MiB free: not 20 MiB and the 1 MiB margin
		if got := diskStep(rec); len(got) != 1 || slices.Contains(got[0].Targets, "too_big") {
			t.Fatalf("at 20 MiB free: got %+v, want too_big left out", got)
		}
		if n := count(leftOut); n != 1 {
			t.Fatalf("left-out line logged %d times, want once:\n%s", n, logs.String())
		}

		// The others freed room: 22.5 MiB free, still under pressure.
		fake.set(82)
		got = diskStep(rec)
		if len(got) != 1 || !slices.Equal(got[0].Targets, []string{"in_place", "fits_small", "too_big"}) {
			t.Fatalf("at 22.5 MiB free: got %+v, want too_big signalled again", got)
		}
		if count(fitsAgain) != 1 {
			t.Fatalf("want one line saying too_big fits again, got:\n%s", logs.String())
		}

		// Only too_big left (the others have nothing more to give), and no
		// room again: no signal, one error.
		ests.set("in_place", 30*mib, 0)
		ests.set("fits_small", 20*mib, 0)
		fake.set(90)
		for i := range 3 {
			if got := diskStep(rec); len(got) != 0 {
				t.Fatalf("tick %d: no compaction fits, yet a signal: %+v", i, got)
			}
		}
		if count(noneFits) != 1 || count(leftOut) != 2 {
			t.Fatalf("want one no-compaction-fits error and a second left-out line, got:\n%s", logs.String())
		}
		if !strings.Contains(logs.String(), "level=ERROR") {
			t.Fatalf("want an ERROR line, got:\n%s", logs.String())
		}
		if ps := d.Pressure(); !ps[0].UnderPressure || ps[0].NothingReclaimable {
			t.Fatalf("Pressure() = %+v: under pressure, and not nothing reclaimable (too_big has something)", ps)
		}

		// Room again: too_big is signalled alone.
		fake.set(81)
		if got := diskStep(rec); len(got) != 1 || !slices.Equal(got[0].Targets, []string{"too_big"}) {
			t.Fatalf("room again: got %+v, want [too_big]", got)
		}
		// Relief, and a new episode without room: logged once more.
		fake.set(50)
		diskStep(rec)
		fake.set(90)
		diskStep(rec)
		diskStep(rec)
		if n := count(noneFits); n != 2 {
			t.Fatalf("second episode: no-compaction-fits logged %d times in all, want 2:\n%s", n, logs.String())
		}
	})
}

// TestDiskOrderGrownTargetKeepsItsEstimate: a target that grew since the
// retention trigger's last estimate counts at least what that estimate
// found reclaimable (records do not get younger; appends only push more
// past count and size limits), instead of falling back to its last
// compaction's ratio; an estimate of a larger target (since compacted or
// replaced) is ignored.
func TestDiskOrderGrownTargetKeepsItsEstimate(t *testing.T) {
	dir := t.TempDir()
	s := diskSettings(0)
	targets := []Target{
		diskSizedTarget(t, dir, "grown_estimated", 10000, backends.MethodCopy, s),
		diskSizedTarget(t, dir, "grown_unknown", 10000, backends.MethodCopy, s),
		diskSizedTarget(t, dir, "small", 5000, backends.MethodCopy, s),
		diskSizedTarget(t, dir, "shrunk", 9000, backends.MethodCopy, s),
	}
	ests := &diskEstimates{}
	ests.set("grown_estimated", 9500, 8000) // before the last 500 bytes: 8000 reclaimable
	ests.set("shrunk", 20000, 19000)        // of a larger file: stale
	synctest.Test(t, func(t *testing.T) {
		fake := &diskFake{percent: 50}
		d := NewDisk(targets, timerTestLogger(), fake.options())
		d.SetEstimates(ests.get)
		// Each compacted before, reclaiming 10 %, and grew since.
		for name, before := range map[string]int64{"grown_estimated": 10000, "grown_unknown": 10000, "small": 5000, "shrunk": 9500} {
			d.Observe(backends.Report{Target: name, BeforeBytes: backends.Int64(before),
				ReclaimedBytes: backends.Int64(before / 10), AfterBytes: backends.Int64(before - before/10)})
		}
		rec, stop := diskRun(t, d)
		defer stop()
		fake.set(90)
		got := diskStep(rec)
		// Survivors: grown_estimated 2000 (its estimate), small 4500,
		// shrunk 8100 (its ratio: the estimate is stale), grown_unknown
		// 9000 (its ratio).
		want := []string{"grown_estimated", "small", "shrunk", "grown_unknown"}
		if len(got) != 1 || !slices.Equal(got[0].Targets, want) {
			t.Fatalf("got %+v, want targets %v", got, want)
		}
	})
}
