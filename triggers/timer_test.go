package triggers

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// timerRecorder collects emitted signals with their (virtual) time.
type timerRecorder struct {
	mu   sync.Mutex
	sigs []policy.Signal
}

func (r *timerRecorder) emit(s policy.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sigs = append(r.sigs, s)
}

func (r *timerRecorder) take() []policy.Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sigs
	r.sigs = nil
	return s
}

func timerTarget(name string, interval time.Duration, jitter float64) Target {
	return Target{Name: name, Backend: backends.KindJSON, Timer: TimerSettings{Interval: interval, Jitter: jitter}}
}

func timerTestLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startTimer runs tm in the bubble and returns a stop function.
func startTimer(t *testing.T, tm *Timer, rec *timerRecorder) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- tm.Run(ctx, rec.emit) }()
	synctest.Wait()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	}
}

func TestTimerFiresAtInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &timerRecorder{}
		tm := NewTimer([]Target{timerTarget("a", time.Hour, 0)}, timerTestLogger())
		start := time.Now()
		stop := startTimer(t, tm, rec)
		defer stop()

		time.Sleep(time.Hour - time.Second)
		synctest.Wait()
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("fired before the interval: %+v", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		got := rec.take()
		if len(got) != 1 {
			t.Fatalf("want 1 signal at the interval, got %d", len(got))
		}
		s := got[0]
		if s.Kind != policy.KindTimer || s.Urgent || len(s.Targets) != 1 || s.Targets[0] != "a" {
			t.Fatalf("bad signal %+v", s)
		}
		if d := s.At.Sub(start); d != time.Hour {
			t.Fatalf("fired after %s, want 1h", d)
		}
		// And again one interval later.
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := rec.take(); len(got) != 1 {
			t.Fatalf("want the second firing, got %d", len(got))
		}
	})
}

func TestTimerJitterBounds(t *testing.T) {
	for _, r := range []float64{0, 0.25, 0.999} {
		synctest.Test(t, func(t *testing.T) {
			rec := &timerRecorder{}
			tm := NewTimer([]Target{timerTarget("a", 100*time.Minute, 0.1)}, timerTestLogger(), TimerOptions{Rand: func() float64 { return r }})
			start := time.Now()
			stop := startTimer(t, tm, rec)
			defer stop()
			time.Sleep(101 * time.Minute)
			synctest.Wait()
			got := rec.take()
			if len(got) != 1 {
				t.Fatalf("rand %v: want 1 signal, got %d", r, len(got))
			}
			d := got[0].At.Sub(start)
			want := 100*time.Minute - time.Duration(float64(100*time.Minute)*0.1*r)
			if d != want || d < 90*time.Minute || d > 100*time.Minute {
				t.Fatalf("rand %v: fired after %s, want %s within [90m, 100m]", r, d, want)
			}
		})
	}
	// With the real random source, many draws stay within bounds.
	tm := NewTimer(nil, timerTestLogger())
	for range 1000 {
		d := tm.delay(TimerSettings{Interval: time.Hour, Jitter: 0.1})
		if d < 54*time.Minute || d > time.Hour {
			t.Fatalf("delay %s outside [54m, 1h]", d)
		}
	}
	// Jitter is clamped: never below 10% of the interval.
	for range 1000 {
		d := tm.delay(TimerSettings{Interval: time.Hour, Jitter: 5})
		if d < 6*time.Minute || d > time.Hour {
			t.Fatalf("delay %s with jitter 5 outside [6m, 1h]", d)
		}
	}
}

func TestTimerResetByObserve(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &timerRecorder{}
		tm := NewTimer([]Target{timerTarget("a", time.Hour, 0), timerTarget("b", time.Hour, 0)}, timerTestLogger())
		start := time.Now()
		stop := startTimer(t, tm, rec)
		defer stop()

		time.Sleep(40 * time.Minute)
		tm.Observe(backends.Report{Target: "a", Trigger: policy.KindGrowth})
		// Not a reset: dry run, failure, skip.
		tm.Observe(backends.Report{Target: "b", DryRun: true})
		tm.Observe(backends.Report{Target: "b", Error: "boom"})
		tm.Observe(backends.Report{Target: "b", Skipped: "held by node-2"})
		tm.Observe(backends.Report{Target: "unknown"})
		synctest.Wait()

		time.Sleep(20 * time.Minute)
		synctest.Wait()
		got := rec.take()
		if len(got) != 1 || got[0].Targets[0] != "b" {
			t.Fatalf("at 1h want only b, got %+v", got)
		}
		time.Sleep(40*time.Minute - time.Second)
		synctest.Wait()
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("a fired before its reset interval: %+v", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		got = rec.take()
		if len(got) != 1 || got[0].Targets[0] != "a" || got[0].At.Sub(start) != 100*time.Minute {
			t.Fatalf("want a at 1h40m, got %+v", got)
		}
	})
}

func TestTimerDisabledAtZero(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &timerRecorder{}
		tm := NewTimer([]Target{timerTarget("off", 0, 0.1)}, timerTestLogger())
		stop := startTimer(t, tm, rec)
		defer stop()
		time.Sleep(1000 * time.Hour)
		synctest.Wait()
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("disabled timer fired: %+v", got)
		}
		if d := tm.Due(); len(d) != 0 {
			t.Fatalf("disabled timer has a due time: %v", d)
		}
	})
}

func TestTimerSetTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &timerRecorder{}
		tm := NewTimer([]Target{timerTarget("a", time.Hour, 0), timerTarget("gone", time.Hour, 0)}, timerTestLogger())
		start := time.Now()
		stop := startTimer(t, tm, rec)
		defer stop()

		time.Sleep(30 * time.Minute)
		// "gone" removed, "new" added (starts now), "a" shortened to 20m:
		// its last reset was 30m ago, so it fires at once.
		tm.SetTargets([]Target{timerTarget("a", 20*time.Minute, 0), timerTarget("new", 10*time.Minute, 0)})
		synctest.Wait()
		got := rec.take()
		if len(got) != 1 || got[0].Targets[0] != "a" || got[0].At.Sub(start) != 30*time.Minute {
			t.Fatalf("want a at once after shortening, got %+v", got)
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		got = rec.take()
		if len(got) != 1 || got[0].Targets[0] != "new" {
			t.Fatalf("want new at 40m, got %+v", got)
		}
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		for _, s := range rec.take() {
			if s.Targets[0] == "gone" {
				t.Fatalf("removed target fired: %+v", s)
			}
		}
		// Turning a target off at runtime.
		tm.SetTargets([]Target{timerTarget("a", 0, 0)})
		synctest.Wait()
		rec.take()
		time.Sleep(10 * time.Hour)
		synctest.Wait()
		if got := rec.take(); len(got) != 0 {
			t.Fatalf("target turned off still fires: %+v", got)
		}
	})
}
