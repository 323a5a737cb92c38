package triggers

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// fakeEstimator returns what the test sets and counts its calls.
type fakeEstimator struct {
	mu    sync.Mutex
	est   backends.Estimate
	calls int
}

func (f *fakeEstimator) Estimate(ctx context.Context, now time.Time, r backends.Retention) (backends.Estimate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	e := f.est
	e.At = now
	return e, nil
}

func (f *fakeEstimator) set(fn func(e *backends.Estimate)) {
	f.mu.Lock()
	fn(&f.est)
	f.mu.Unlock()
}

func (f *fakeEstimator) n() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

type sigLog struct {
	mu   sync.Mutex
	sigs []policy.Signal
	at   []time.Time
}

func (l *sigLog) emit(s policy.Signal) {
	l.mu.Lock()
	l.sigs = append(l.sigs, s)
	l.at = append(l.at, time.Now())
	l.mu.Unlock()
}

func (l *sigLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sigs)
}

func retTarget(name string, est backends.Estimator, maxAge float64, interval time.Duration) Target {
	return Target{Name: name, Estimator: est, Limits: backends.Retention{MaxAgeSeconds: &maxAge},
		Retention: RetentionSettings{Interval: interval, MinReclaimableRatio: 0.1, MinReclaimableBytes: 1 << 20, AgeSlack: time.Second}}
}

// A target already past its age limit is signalled at once at start.
func TestRetentionAtStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeEstimator{}
		f.set(func(e *backends.Estimate) { e.Oldest = time.Now().Add(-time.Hour); e.Records = 10 })
		r := NewRetention([]Target{retTarget("a", f, 60, time.Hour)}, nil)
		var l sigLog
		ctx, cancel := context.WithCancel(t.Context())
		go r.Run(ctx, l.emit)
		synctest.Wait()
		if l.count() != 1 || l.sigs[0].Kind != policy.KindRetention || l.sigs[0].Urgent {
			t.Fatalf("signals at start: %+v", l.sigs)
		}
		// Not again while no compaction was observed.
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		if l.count() != 1 {
			t.Fatalf("signalled again without a compaction: %d", l.count())
		}
		cancel()
	})
}

// The age deadline is met by a timer to that instant, not by polling.
func TestRetentionAgeDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		f := &fakeEstimator{}
		f.set(func(e *backends.Estimate) { e.Oldest = start.Add(-5 * time.Second); e.Records = 10 })
		// max_age 10s, slack 1s: due 6s from now; the refresh interval is an
		// hour, so only the deadline can wake it.
		r := NewRetention([]Target{retTarget("a", f, 10, time.Hour)}, nil)
		var l sigLog
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.Run(ctx, l.emit)
		time.Sleep(5999 * time.Millisecond)
		synctest.Wait()
		if l.count() != 0 {
			t.Fatalf("signalled before the deadline at %v", l.at[0].Sub(start))
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if l.count() != 1 {
			t.Fatalf("not signalled at the deadline")
		}
		if d := l.at[0].Sub(start); d != 6*time.Second {
			t.Fatalf("signalled after %v, want 6s", d)
		}
		if n := f.n(); n != 2 {
			t.Fatalf("estimator called %d times, want 2 (start and deadline)", n)
		}
		// A compaction removes the oldest; the next oldest is 3s younger.
		f.set(func(e *backends.Estimate) { e.Oldest = start.Add(-2 * time.Second) })
		r.Observe(backends.Report{Target: "a", RemovedRecords: 1})
		synctest.Wait()
		time.Sleep(3*time.Second - time.Millisecond)
		synctest.Wait()
		if l.count() != 1 {
			t.Fatalf("signalled early after the compaction")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if l.count() != 2 || l.at[1].Sub(start) != 9*time.Second {
			t.Fatalf("second deadline: %d signals, at %v", l.count(), l.at)
		}
	})
}

// The count/size trigger fires at the refresh that sees both thresholds.
func TestRetentionReclaimable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeEstimator{}
		f.set(func(e *backends.Estimate) { e.Bytes = 100 << 20; e.ReclaimableBytes = 5 << 20 })
		tg := retTarget("a", f, 1e9, 10*time.Second)
		tg.Limits = backends.Retention{MaxRecords: new(int64(5))}
		r := NewRetention([]Target{tg}, nil)
		var l sigLog
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.Run(ctx, l.emit)
		time.Sleep(25 * time.Second)
		synctest.Wait()
		if l.count() != 0 {
			t.Fatalf("signalled at 5%% reclaimable")
		}
		start := time.Now()
		f.set(func(e *backends.Estimate) { e.ReclaimableBytes = 11 << 20 })
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if l.count() != 1 || time.Since(start) > 10*time.Second {
			t.Fatalf("signals %d", l.count())
		}
		// A compaction that removed nothing holds the target back a minute.
		r.Observe(backends.Report{Target: "a", ReclaimedBytes: new(int64(0))})
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if l.count() != 1 {
			t.Fatalf("signalled during the hold")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if l.count() != 2 {
			t.Fatalf("not signalled after the hold")
		}
	})
}

// When compactions keep leaving the oldest record past the age limit (what
// the estimator cannot see: entries a Redis consumer group still holds), the
// age signal backs off: 1 min after the first such compaction, doubling up
// to an hour, instead of every minute forever. A compaction that moves the
// oldest record ends the hold.
func TestRetentionAgeBacksOffWhenCompactionsLeaveOldest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		f := &fakeEstimator{}
		f.set(func(e *backends.Estimate) {
			e.Oldest = start.Add(-time.Hour)
			e.Records, e.Bytes = 100, 100<<20
			e.ReclaimableRecords, e.ReclaimableBytes = 10, 10<<10 // below min_reclaimable_bytes
		})
		r := NewRetention([]Target{retTarget("a", f, 60, 10*time.Second)}, nil)
		var l sigLog
		var removed int64 // what the next compaction removes
		var mu sync.Mutex
		emit := func(s policy.Signal) {
			l.emit(s)
			// The compaction runs at once and is observed.
			mu.Lock()
			n := removed
			mu.Unlock()
			r.Observe(backends.Report{Target: "a", RemovedRecords: n, ReclaimedBytes: new(int64(0))})
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.Run(ctx, emit)
		time.Sleep(3*time.Hour + 5*time.Minute)
		synctest.Wait()
		var got []time.Duration
		l.mu.Lock()
		for _, at := range l.at {
			got = append(got, at.Sub(start))
		}
		l.mu.Unlock()
		m := time.Minute
		want := []time.Duration{0, 1 * m, 3 * m, 7 * m, 15 * m, 31 * m, 63 * m, 123 * m, 183 * m}
		if !slices.Equal(got, want) {
			t.Fatalf("signals at %v, want %v", got, want)
		}
		if st := r.Status()["a"]; !st.Deadline.Equal(start.Add(243*m)) || st.AgeNote != "the last 9 compactions left the oldest record" {
			t.Fatalf("status deadline %v note %q", st.Deadline.Sub(start), st.AgeNote)
		}
		// 10 s refreshes over 3h5m, and one at each signal: no busy loop.
		if n := f.n(); n > 3*360+30+len(want)+1 {
			t.Fatalf("estimator called %d times", n)
		}

		// A compaction removes the oldest record: the hold is over, the new
		// oldest (still past the limit) is due at once, and the backoff
		// starts again from a minute.
		t0 := time.Since(start)
		mu.Lock()
		removed = 5
		mu.Unlock()
		f.set(func(e *backends.Estimate) { e.Oldest = start.Add(-30 * time.Minute) })
		r.Observe(backends.Report{Target: "a", RemovedRecords: 5})
		synctest.Wait()
		mu.Lock()
		removed = 0
		mu.Unlock()
		time.Sleep(2 * m)
		synctest.Wait()
		l.mu.Lock()
		got = nil
		for _, at := range l.at[len(want):] {
			got = append(got, at.Sub(start)-t0)
		}
		l.mu.Unlock()
		if !slices.Equal(got, []time.Duration{0, 1 * m}) {
			t.Fatalf("after the oldest moved: signals at %v after it, want [0 1m]", got)
		}
	})
}

// When the estimate says nothing is reclaimable although the oldest record
// is past the limit (a Redis approximate trim removes whole stream nodes
// only), the age deadline is the estimate's NextExpiry + slack, when the
// next whole node can go: no signal before, one at that instant.
func TestRetentionAgeWaitsForNextRemovable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		f := &fakeEstimator{}
		f.set(func(e *backends.Estimate) {
			e.Oldest = start.Add(-time.Hour)
			e.Records, e.Bytes = 100, 100<<10
			e.NextExpiry = start.Add(10 * time.Minute)
		})
		r := NewRetention([]Target{retTarget("a", f, 60, 10*time.Second)}, nil)
		var l sigLog
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.Run(ctx, l.emit)
		time.Sleep(10*time.Minute + time.Second - time.Millisecond)
		synctest.Wait()
		if l.count() != 0 {
			t.Fatalf("signalled at %v, before the next node can go", l.at[0].Sub(start))
		}
		if st := r.Status()["a"]; !st.Deadline.Equal(start.Add(10*time.Minute+time.Second)) || st.AgeNote != "nothing removable before then" {
			t.Fatalf("status deadline %v note %q", st.Deadline.Sub(start), st.AgeNote)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if l.count() != 1 || l.at[0].Sub(start) != 10*time.Minute+time.Second {
			t.Fatalf("signals %d, at %v; want one at 10m1s", l.count(), l.at)
		}
		if n := f.n(); n != 60+2 {
			t.Fatalf("estimator called %d times, want 62 (start, 60 refreshes, the deadline)", n)
		}
	})
}

// A signal no report answered is forgotten after 10 intervals, and the
// target is signalled again then: at that instant, not in a busy loop at
// it.
func TestRetentionUnansweredSignalRepeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		f := &fakeEstimator{}
		f.set(func(e *backends.Estimate) { e.Oldest = start.Add(-time.Hour); e.Records = 10 })
		r := NewRetention([]Target{retTarget("a", f, 60, 10*time.Second)}, nil)
		var l sigLog
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.Run(ctx, l.emit)
		time.Sleep(250 * time.Second)
		synctest.Wait()
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.at) != 3 || l.at[1].Sub(start) != 100*time.Second || l.at[2].Sub(start) != 200*time.Second {
			t.Fatalf("signals at %v, want at 0, 100s and 200s", l.at)
		}
		if n := f.n(); n != 26 {
			t.Fatalf("estimator called %d times, want 26 (every 10 s)", n)
		}
	})
}

// min_reclaimable_bytes holds a target back by itself: a small target with
// a large reclaimable share is not due until the reclaimable bytes reach it
// (with min_reclaimable_ratio 0 as with the default ratio).
func TestRetentionMinReclaimableBytesAlone(t *testing.T) {
	for _, ratio := range []float64{0, 0.1} {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeEstimator{}
			// Half of a 1 MiB target is reclaimable: 50 % ≥ the ratio,
			// 512 KiB < min_reclaimable_bytes 1 MiB.
			f.set(func(e *backends.Estimate) { e.Bytes, e.ReclaimableBytes, e.ReclaimableRecords = 1<<20, 512<<10, 500 })
			tg := retTarget("a", f, 1e9, 10*time.Second)
			tg.Limits = backends.Retention{MaxRecords: new(int64(500))}
			tg.Retention.MinReclaimableRatio = ratio
			r := NewRetention([]Target{tg}, nil)
			var l sigLog
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go r.Run(ctx, l.emit)
			time.Sleep(time.Minute)
			synctest.Wait()
			if l.count() != 0 {
				t.Fatalf("ratio %g: signalled with 512 KiB reclaimable, below min_reclaimable_bytes", ratio)
			}
			f.set(func(e *backends.Estimate) { e.Bytes, e.ReclaimableBytes = 2<<20, 1<<20 })
			time.Sleep(10 * time.Second)
			synctest.Wait()
			if l.count() != 1 {
				t.Fatalf("ratio %g: %d signals once 1 MiB is reclaimable, want 1", ratio, l.count())
			}
		})
	}
}
