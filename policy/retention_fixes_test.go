package policy

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
)

// Timer and retention signals are not debounced: a 1 s timer against a 5 s
// debounce compacts at once, not at max_wait.
func TestTimerAndRetentionNotDebounced(t *testing.T) {
	for _, kind := range []string{KindTimer, KindRetention} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, oneTarget("a", TargetSettings{Debounce: s(5), MaxWait: s(60), Cooldown: s(2)}), s(0.1))
				defer h.stop()
				for i := range 10 {
					h.at(s(float64(i)))
					h.signal(kind, false, "a")
				}
				h.at(s(10))
				// At 0; then the cooldown (2 s from the end at 0.1 s) gates
				// the next signals: 2.1, then 4.2, 6.3, 8.4.
				h.wantStarts("a", 0, s(2.1), s(4.2), s(6.3), s(8.4))
			})
		})
	}
}

// A growth signal stays debounced; a timer signal arriving into its pending
// run makes it due at once.
func TestGrowthStillDebouncedTimerJoinsPrompt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Debounce: s(5), MaxWait: s(60)}), s(0.1))
		defer h.stop()
		h.signal(KindGrowth, false, "a")
		h.at(s(1))
		h.signal(KindGrowth, false, "a")
		h.at(s(3))
		h.wantStarts("a")
		h.signal(KindRetention, false, "a")
		h.wantStarts("a", s(3))
		if j := h.r.allJobs(); j[0].Trigger != KindRetention {
			t.Errorf("trigger %q", j[0].Trigger)
		}
	})
}

// Failed retries do not spend the shared token bucket: after a target failed
// five times, another target still compacts at once.
func TestRetriesTakeNoToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxConcurrent: 2, Rate: 30, Burst: 5, Targets: map[string]TargetSettings{
			"bad":  {BackoffBase: s(1), BackoffMax: s(2)},
			"good": {},
		}}
		h := start(t, cfg, s(0.1))
		defer h.stop()
		h.r.setFail(func(job executor.Job, start time.Duration) string {
			if job.Target == "bad" && start < s(20) {
				return "boom"
			}
			return ""
		})
		h.signal(KindTimer, false, "bad")
		h.at(s(20))
		if n := len(h.r.starts("bad")); n < 6 {
			t.Fatalf("bad ran %d times, want at least 6 (retries)", n)
		}
		// One token spent by bad's first attempt: four left.
		h.signal(KindTimer, false, "good")
		h.wantStarts("good", s(20))
		for range 3 {
			h.at(time.Since(h.t0) + s(1))
			h.signal(KindTimer, false, "good")
		}
		h.at(s(60))
		if n := len(h.r.starts("good")); n != 4 {
			t.Errorf("good ran %d times, want 4 (the bucket held 4)", n)
		}
		if h.obs.rateLimited != 0 {
			t.Errorf("rate limited %d", h.obs.rateLimited)
		}
	})
}

// A failing target whose every run is followed by a routine signal (in the
// daemon the retention trigger re-estimates and signals as each report is
// published, before the engine records the failure; growth and the timer can
// do the same) takes no token for those runs either: after a failure streak
// of any length a healthy target still finds the bucket as the streak's
// first attempt left it.
func TestFailingTargetRoutineSignalsTakeNoToken(t *testing.T) {
	for _, kind := range []string{KindRetention, KindGrowth, KindTimer} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := Config{MaxConcurrent: 2, Rate: 30, Burst: 5, Targets: map[string]TargetSettings{
					"bad":  {Debounce: s(0.5), BackoffBase: s(1), BackoffMax: s(2)},
					"good": {},
				}}
				h := start(t, cfg, s(0.1))
				defer h.stop()
				h.r.setFail(func(job executor.Job, start time.Duration) string {
					if job.Target == "bad" && start < s(30) {
						return "boom"
					}
					return ""
				})
				h.r.mu.Lock()
				h.r.beforeEnd = func(job executor.Job, rep backends.Report) {
					if job.Target == "bad" && rep.Error != "" {
						// Arrives while bad's failing run is still in flight.
						h.e.Signal(Signal{Kind: kind, Targets: []string{"bad"}, Reason: "re-estimated"})
					}
				}
				h.r.mu.Unlock()
				h.signal(kind, false, "bad")
				h.at(s(30))
				if n := len(h.r.starts("bad")); n < 10 {
					t.Fatalf("bad ran %d times in 30 s, want at least 10 (every backoff)", n)
				}
				if st := h.status("bad"); st.State == StateRateLimited {
					t.Fatalf("bad is rate limited: its failing runs took tokens")
				}
				// One token spent by bad's first attempt: four left, and good
				// starts at once.
				h.signal(KindTimer, false, "good")
				h.wantStarts("good", s(30))
				for range 3 {
					h.at(time.Since(h.t0) + s(1))
					h.signal(KindTimer, false, "good")
				}
				if n := len(h.r.starts("good")); n != 4 {
					t.Errorf("good ran %d times, want 4 (the bucket held 4)", n)
				}
				if h.obs.rateLimited != 0 {
					t.Errorf("rate limited %d times", h.obs.rateLimited)
				}
			})
		})
	}
}
