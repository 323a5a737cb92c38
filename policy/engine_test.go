package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/internal/testlog"
)

// ranJob is one job the fake runner ran, with virtual start and end times
// relative to the test's start.
type ranJob struct {
	executor.Job
	Start, End time.Duration
	Cancelled  bool
}

// fakeRunner records jobs; the test controls their duration and result.
type fakeRunner struct {
	t0 time.Time

	mu         sync.Mutex
	dur        map[string]time.Duration // per target; default below
	defDur     time.Duration
	fail       func(job executor.Job, start time.Duration) string // error text, "" = success
	skip       func(job executor.Job) string
	beforeEnd  func(job executor.Job, rep backends.Report) // called as the job returns, before the engine records it
	jobs       []*ranJob
	running    map[string]int
	total      int
	maxTotal   int
	overlapped []string
}

func newFakeRunner(t0 time.Time, d time.Duration) *fakeRunner {
	return &fakeRunner{t0: t0, defDur: d, dur: map[string]time.Duration{}, running: map[string]int{}}
}

func (f *fakeRunner) Run(ctx context.Context, job executor.Job) backends.Report {
	now := time.Now()
	f.mu.Lock()
	rj := &ranJob{Job: job, Start: now.Sub(f.t0)}
	f.jobs = append(f.jobs, rj)
	f.running[job.Target]++
	if f.running[job.Target] > 1 {
		f.overlapped = append(f.overlapped, job.Target)
	}
	f.total++
	f.maxTotal = max(f.maxTotal, f.total)
	d, ok := f.dur[job.Target]
	if !ok {
		d = f.defDur
	}
	f.mu.Unlock()

	rep := backends.Report{Target: job.Target, Backend: "json", Trigger: job.Trigger, StartedAt: now, DryRun: job.DryRun}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		rep.Error = "cancelled: " + ctx.Err().Error()
	}

	f.mu.Lock()
	f.running[job.Target]--
	f.total--
	rj.End = time.Since(f.t0)
	rj.Cancelled = ctx.Err() != nil
	if rep.Error == "" && f.fail != nil {
		rep.Error = f.fail(job, rj.Start)
	}
	if rep.Error == "" && f.skip != nil {
		rep.Skipped = f.skip(job)
	}
	rep.DurationMS = (rj.End - rj.Start).Milliseconds()
	beforeEnd := f.beforeEnd
	f.mu.Unlock()
	if beforeEnd != nil {
		beforeEnd(job, rep)
	}
	return rep
}

// starts returns the start offsets of the jobs of target ("" = all).
func (f *fakeRunner) starts(target string) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for _, j := range f.jobs {
		if target == "" || j.Target == target {
			out = append(out, j.Start)
		}
	}
	return out
}

func (f *fakeRunner) allJobs() []ranJob {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ranJob, len(f.jobs))
	for i, j := range f.jobs {
		out[i] = *j
	}
	return out
}

func (f *fakeRunner) setFail(fn func(job executor.Job, start time.Duration) string) {
	f.mu.Lock()
	f.fail = fn
	f.mu.Unlock()
}

func (f *fakeRunner) check(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.overlapped) > 0 {
		t.Errorf("two compactions of one target at once: %v", f.overlapped)
	}
}

// observer counts the hooks.
type observer struct {
	mu          sync.Mutex
	triggered   map[string]int
	coalesced   map[string]int
	rateLimited int
	stuck       []string
}

func newObserver() *observer {
	return &observer{triggered: map[string]int{}, coalesced: map[string]int{}}
}

func (o *observer) Triggered(kind string) { o.mu.Lock(); o.triggered[kind]++; o.mu.Unlock() }
func (o *observer) Coalesced(target string) {
	o.mu.Lock()
	o.coalesced[target]++
	o.mu.Unlock()
}
func (o *observer) RateLimited() { o.mu.Lock(); o.rateLimited++; o.mu.Unlock() }
func (o *observer) Stuck(target string, stuck bool) {
	o.mu.Lock()
	o.stuck = append(o.stuck, fmt.Sprintf("%s=%v", target, stuck))
	o.mu.Unlock()
}

// harness is an engine running in a synctest bubble.
type harness struct {
	t      *testing.T
	t0     time.Time
	e      *Engine
	r      *fakeRunner
	obs    *observer
	logs   *testlog.Buffer
	cancel context.CancelFunc
	errc   chan error
}

func start(t *testing.T, cfg Config, dur time.Duration) *harness {
	t.Helper()
	h := &harness{t: t, t0: time.Now(), obs: newObserver(), logs: &testlog.Buffer{}, errc: make(chan error, 1)}
	h.r = newFakeRunner(h.t0, dur)
	h.e = New(cfg, h.r, slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	h.e.SetObserver(h.obs)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.errc <- h.e.Run(ctx) }()
	synctest.Wait()
	return h
}

// stop shuts the engine down (cancelling whatever runs) and checks Run's
// result.
func (h *harness) stop() {
	h.t.Helper()
	h.cancel()
	if err := <-h.errc; err != nil {
		h.t.Errorf("Run returned %v", err)
	}
	h.r.check(h.t)
}

// at advances virtual time to t0+d and lets everything settle.
func (h *harness) at(d time.Duration) {
	h.t.Helper()
	now := time.Since(h.t0)
	if d < now {
		h.t.Fatalf("at(%v): already at %v", d, now)
	}
	time.Sleep(d - now)
	synctest.Wait()
}

func (h *harness) signal(kind string, urgent bool, targets ...string) {
	h.e.Signal(Signal{Kind: kind, Urgent: urgent, Targets: targets, Reason: kind + " reason", At: time.Now()})
	synctest.Wait()
}

func (h *harness) status(name string) TargetStatus {
	h.t.Helper()
	for _, s := range h.e.Status() {
		if s.Target == name {
			return s
		}
	}
	h.t.Fatalf("no status for target %q", name)
	return TargetStatus{}
}

// wantState checks a target's State and Until (offset from t0; -1 = zero).
func (h *harness) wantState(name, state string, until time.Duration) TargetStatus {
	h.t.Helper()
	st := h.status(name)
	var u time.Duration = -1
	if !st.Until.IsZero() {
		u = st.Until.Sub(h.t0)
	}
	if st.State != state || u != until {
		h.t.Errorf("at %v: %s state %q until %v, want %q until %v", time.Since(h.t0), name, st.State, u, state, until)
	}
	return st
}

func (h *harness) wantStarts(target string, want ...time.Duration) {
	h.t.Helper()
	got := h.r.starts(target)
	if !slices.Equal(got, want) {
		h.t.Errorf("at %v: starts of %q = %v, want %v", time.Since(h.t0), target, got, want)
	}
}

func s(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }

func oneTarget(name string, ts TargetSettings) Config {
	return Config{MaxConcurrent: 1, Targets: map[string]TargetSettings{name: ts}}
}

func TestBurstYieldsOneRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Debounce: s(5), MaxWait: s(60)}), s(1))
		defer h.stop()
		for range 10000 {
			h.e.Signal(Signal{Kind: KindGrowth, Targets: []string{"a"}})
		}
		synctest.Wait()
		st := h.wantState("a", StateDebouncing, s(5))
		if st.PendingSignals != 10000 || st.NextDue.Sub(h.t0) != s(5) {
			t.Errorf("pending %d next due %v, want 10000 and 5s", st.PendingSignals, st.NextDue.Sub(h.t0))
		}
		h.at(s(5) - 1)
		h.wantStarts("a")
		h.at(s(5))
		h.wantStarts("a", s(5))
		h.wantState("a", StateRunning, -1)
		h.at(s(3600))
		h.wantStarts("a", s(5))
		h.wantState("a", StateIdle, -1)
		if got := h.obs.coalesced["a"]; got != 9999 {
			t.Errorf("coalesced = %d, want 9999", got)
		}
		if got := h.obs.triggered[KindGrowth]; got != 10000 {
			t.Errorf("triggered = %d, want 10000", got)
		}

		// Trailing debounce: each signal extends the quiet time.
		base := s(4000)
		for _, off := range []time.Duration{0, s(2), s(4)} {
			h.at(base + off)
			h.signal(KindGrowth, false, "a")
		}
		h.at(base + s(9) - 1)
		h.wantStarts("a", s(5))
		h.at(base + s(9))
		h.wantStarts("a", s(5), base+s(9))
	})
}

func TestContinuousSignalsRunEveryMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Debounce: s(5), MaxWait: s(60.25)}), s(2))
		defer h.stop()
		for i := range 200 {
			h.at(s(float64(i) + 0.5))
			h.signal(KindGrowth, false, "a")
		}
		h.at(s(1000))
		// first signal 0.5 → 60.75; follow-up's first signal 61.5 → 121.75;
		// then 122.5 → 182.75; the last follow-up (first 183.5, last 199.5)
		// is due by debounce at 204.5.
		h.wantStarts("a", s(60.75), s(121.75), s(182.75), s(204.5))
		if got := h.obs.coalesced["a"]; got != 196 {
			t.Errorf("coalesced = %d, want 196 (200 signals, 4 runs)", got)
		}
	})
}

func TestCooldownFromEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Cooldown: s(30)}), s(10))
		defer h.stop()
		h.signal(KindGrowth, false, "a")
		h.wantStarts("a", 0)
		h.at(s(15))
		h.signal(KindGrowth, false, "a")
		st := h.wantState("a", StateCooldown, s(40)) // 30s after the END (10s), not the start
		if st.NextDue.Sub(h.t0) != s(40) || st.PendingSignals != 1 {
			t.Errorf("next due %v pending %d, want 40s and 1", st.NextDue.Sub(h.t0), st.PendingSignals)
		}
		h.at(s(40) - 1)
		h.wantStarts("a", 0)
		h.at(s(40))
		h.wantStarts("a", 0, s(40))
	})
}

func TestSingleFlightCoalescesIntoOneFollowUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{MaxConcurrent: 5, Targets: map[string]TargetSettings{"a": {}}}, s(10))
		defer h.stop()
		h.signal(KindGrowth, false, "a")
		for i := 1; i <= 9; i++ {
			h.at(s(float64(i)))
			h.signal(KindGrowth, false, "a")
		}
		st := h.wantState("a", StateRunning, -1)
		if st.PendingSignals != 9 || st.RunningSince != h.t0 {
			t.Errorf("pending %d running since %v, want 9 and t0", st.PendingSignals, st.RunningSince)
		}
		h.at(s(100))
		h.wantStarts("a", 0, s(10))
		if got := h.obs.coalesced["a"]; got != 8 {
			t.Errorf("coalesced = %d, want 8", got)
		}
	})
}

func TestRateLimitAndBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		names := []string{"a", "b", "c", "d", "e"}
		cfg := Config{MaxConcurrent: 10, Rate: 60, Burst: 2, Targets: map[string]TargetSettings{}}
		for _, n := range names {
			cfg.Targets[n] = TargetSettings{}
		}
		h := start(t, cfg, s(1))
		defer h.stop()
		h.signal(KindGrowth, false, names...)
		h.wantStarts("", 0, 0)
		h.at(s(30))
		h.wantState("c", StateRateLimited, s(60))
		h.wantState("d", StateRateLimited, s(120))
		h.wantState("e", StateRateLimited, s(180))
		h.at(s(200))
		for i, n := range names {
			want := []time.Duration{0}
			if i >= 2 {
				want = []time.Duration{s(60 * float64(i-1))}
			}
			h.wantStarts(n, want...)
		}
		if h.obs.rateLimited != 3 {
			t.Errorf("rate limited = %d, want 3", h.obs.rateLimited)
		}
		// After a long quiet time the bucket holds Burst tokens, no more.
		h.at(s(3600))
		h.signal(KindGrowth, false, "a", "b", "c")
		h.at(s(3600 + 59))
		h.wantStarts("", 0, 0, s(60), s(120), s(180), s(3600), s(3600))
		h.at(s(3600 + 60))
		h.wantStarts("c", s(60), s(3660))
	})
}

func TestUrgentBypassesDebounceCooldownBucketNotSingleFlightOrCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxConcurrent: 2, Rate: 60, Burst: 1, Targets: map[string]TargetSettings{
			"a": {Debounce: s(5), Cooldown: s(30)},
			"b": {Debounce: s(5)},
			"c": {Debounce: s(5)},
			"d": {},
		}}
		h := start(t, cfg, s(5))
		defer h.stop()
		h.signal(KindGrowth, false, "a") // takes the only token at 5s
		h.at(s(12))
		h.signal(KindDisk, true, "a") // cooldown until 40, bucket empty until 65
		h.wantStarts("a", s(5), s(12))
		h.at(s(13))
		h.signal(KindNATS, true, "a") // a runs: waits for the end, 17
		h.wantState("a", StateRunning, -1)
		h.at(s(17) - 1)
		h.wantStarts("a", s(5), s(12))
		h.at(s(17))
		h.wantStarts("a", s(5), s(12), s(17))
		h.at(s(20))
		h.signal(KindDisk, true, "b", "c") // one slot left: c waits for a's end at 22
		h.wantStarts("b", s(20))
		h.wantState("c", StateWaitingForSlot, -1)
		h.at(s(22))
		h.wantStarts("c", s(22))
		// Urgent runs took no token: the one taken at 5s is back at 65s.
		h.at(s(64))
		h.signal(KindGrowth, false, "d")
		h.wantState("d", StateRateLimited, s(65))
		h.at(s(65))
		h.wantStarts("d", s(65))
		jobs := h.r.allJobs()
		if len(jobs) != 6 {
			t.Fatalf("%d jobs, want 6: %+v", len(jobs), jobs)
		}
		if jobs[1].Trigger != KindDisk || jobs[2].Trigger != KindNATS {
			t.Errorf("triggers %q %q, want disk nats", jobs[1].Trigger, jobs[2].Trigger)
		}
		if h.r.maxTotal != 2 {
			t.Errorf("max concurrent = %d, want 2", h.r.maxTotal)
		}
	})
}

func TestMaxConcurrentAcrossTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{"a": {}, "b": {}, "c": {}}}
		h := start(t, cfg, s(10))
		defer h.stop()
		h.signal(KindTimer, false, "a", "b", "c")
		h.at(s(5))
		st := h.wantState("c", StateWaitingForSlot, -1)
		if st.NextDue != h.t0 {
			t.Errorf("next due %v, want t0", st.NextDue)
		}
		h.wantStarts("", 0, 0)
		h.at(s(10))
		h.wantStarts("c", s(10))
		if h.r.maxTotal != 2 {
			t.Errorf("max concurrent = %d, want 2", h.r.maxTotal)
		}
		// Raising the cap by Update lets waiting work start at once.
		h.signal(KindTimer, false, "a", "b") // c runs: one slot left
		h.wantStarts("", 0, 0, s(10), s(10))
		h.wantState("b", StateWaitingForSlot, -1)
		h.e.Update(Config{MaxConcurrent: 3, Targets: cfg.Targets})
		synctest.Wait()
		h.wantStarts("", 0, 0, s(10), s(10), s(10))
	})
}

func TestBackoffStuckAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Cooldown: s(10), BackoffBase: s(30), BackoffMax: s(600)}), s(1))
		defer h.stop()
		h.r.setFail(func(job executor.Job, start time.Duration) string {
			if start < s(650) {
				return "disk on fire"
			}
			return ""
		})
		h.signal(KindGrowth, false, "a")
		h.at(s(2))
		st := h.wantState("a", StateBackingOff, s(31))
		if st.ConsecutiveFailures != 1 || st.Stuck || st.LastReport == nil || st.LastReport.Error != "disk on fire" {
			t.Errorf("status %+v", st)
		}
		h.at(s(40))
		h.wantState("a", StateBackingOff, s(92)) // 32 + 60
		h.at(s(94))
		st = h.wantState("a", StateBackingOff, s(693)) // stuck: retried at the cap, 93 + 600
		if !st.Stuck || st.ConsecutiveFailures != 3 {
			t.Errorf("stuck %v failures %d, want true 3", st.Stuck, st.ConsecutiveFailures)
		}
		// An urgent request during backoff runs anyway.
		h.at(s(100))
		h.signal(KindNATS, true, "a")
		h.wantStarts("a", 0, s(31), s(92), s(100))
		h.at(s(102))
		h.wantState("a", StateBackingOff, s(701))
		h.at(s(701))
		h.wantStarts("a", 0, s(31), s(92), s(100), s(701))
		if jobs := h.r.allJobs(); jobs[1].Reason != "retry after failure: growth reason" || jobs[1].Trigger != KindGrowth ||
			jobs[4].Reason != "retry after failure: nats reason" || jobs[4].Trigger != KindNATS {
			t.Errorf("retry jobs %+v and %+v", jobs[1].Job, jobs[4].Job)
		}
		h.at(s(5000))
		h.wantStarts("a", 0, s(31), s(92), s(100), s(701))
		st = h.wantState("a", StateIdle, -1)
		if st.Stuck || st.ConsecutiveFailures != 0 || st.LastReport.Error != "" {
			t.Errorf("after success: %+v", st)
		}
		if want := []string{"a=true", "a=false"}; !slices.Equal(h.obs.stuck, want) {
			t.Errorf("Stuck hooks %v, want %v", h.obs.stuck, want)
		}
		if n := h.logs.Count("target is stuck"); n != 1 {
			t.Errorf("%d stuck warnings, want 1", n)
		}
		if n := h.logs.Count("target recovered"); n != 1 {
			t.Errorf("%d recovery lines, want 1", n)
		}
	})
}

// TestUrgentPressureKeepsFailureBackoff: a target that fails under disk (or
// Redis memory) pressure is not retried at every check of the trigger, which
// keeps sending urgent signals; it waits out its backoff, and /status says
// so. A NATS request still runs it at once.
func TestUrgentPressureKeepsFailureBackoff(t *testing.T) {
	for _, kind := range []string{KindDisk, KindRedisMemory} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ts := TargetSettings{Debounce: s(5), MaxWait: s(60), Cooldown: s(30), BackoffBase: s(2), BackoffMax: s(8)}
				h := start(t, oneTarget("a", ts), s(0.5))
				defer h.stop()
				h.r.setFail(func(executor.Job, time.Duration) string { return "write: no space left on device" })

				h.signal(kind, true, "a") // runs at once, fails at 0.5
				h.at(s(0.7))
				// The routine retry waits for the cooldown (30.5), which is
				// longer than the backoff (2.5): the target is backing off.
				h.wantState("a", StateBackingOff, s(30.5))
				for i := 1; i <= 25; i++ {
					h.at(s(float64(i)))
					h.signal(kind, true, "a")
					if i == 1 {
						// Urgent: no cooldown, but the backoff (0.5+2).
						h.wantState("a", StateBackingOff, s(2.5))
					}
				}
				// Failures at 0.5, 3, 7.5, 16, 24.5: backoff 2, 4, 8, 8, 8.
				h.wantStarts("a", 0, s(2.5), s(7), s(15.5), s(24))
				st := h.wantState("a", StateBackingOff, s(32.5))
				if !st.Stuck || st.ConsecutiveFailures != 5 {
					t.Errorf("stuck %v failures %d, want true 5", st.Stuck, st.ConsecutiveFailures)
				}
				if n := h.logs.Count("compaction failed; will retry"); n != 5 {
					t.Errorf("%d failure lines, want 5", n)
				}
				if jobs := h.r.allJobs(); jobs[2].Trigger != kind {
					t.Errorf("retry trigger %q, want %q", jobs[2].Trigger, kind)
				}

				// A request, sent by a person or a pipeline, runs it at once.
				h.at(s(25.25))
				h.signal(KindNATS, true, "a")
				h.wantStarts("a", 0, s(2.5), s(7), s(15.5), s(24), s(25.25))
				// ... and so does one merged into a pressure run backing off.
				h.at(s(26))
				h.signal(kind, true, "a")
				h.wantState("a", StateBackingOff, s(33.75))
				h.signal(KindNATS, true, "a")
				h.wantStarts("a", 0, s(2.5), s(7), s(15.5), s(24), s(25.25), s(26))
			})
		})
	}
}

func TestSkippedIsNeitherFailureNorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Cooldown: s(30)}), s(1))
		defer h.stop()
		h.r.skip = func(executor.Job) string { return "held by node-2" }
		h.signal(KindGrowth, false, "a")
		h.at(s(1000))
		h.wantStarts("a", 0)
		st := h.wantState("a", StateIdle, -1)
		if st.ConsecutiveFailures != 0 || st.LastReport == nil || st.LastReport.Skipped == "" {
			t.Errorf("status %+v", st)
		}
	})
}

func TestBackoffDurations(t *testing.T) {
	ts := TargetSettings{BackoffBase: s(30), BackoffMax: s(100)}
	var got []time.Duration
	for n := 1; n <= 4; n++ {
		got = append(got, ts.backoff(n))
	}
	if want := []time.Duration{s(30), s(60), s(100), s(100)}; !slices.Equal(got, want) {
		t.Errorf("backoff = %v, want %v", got, want)
	}
	if got := (TargetSettings{}).backoff(1); got != DefaultBackoffBase {
		t.Errorf("default base = %v", got)
	}
	if got := (TargetSettings{}).backoff(5); got != DefaultBackoffMax {
		t.Errorf("default max = %v", got)
	}
}

// TestStatusStates walks one scenario through every state.
func TestStatusStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ts := TargetSettings{Debounce: s(5), MaxWait: s(60), Cooldown: s(30), BackoffBase: s(40)}
		cfg := Config{MaxConcurrent: 1, Rate: 60, Burst: 1, Targets: map[string]TargetSettings{"A": ts, "B": ts}}
		h := start(t, cfg, s(10))
		defer h.stop()
		h.r.setFail(func(job executor.Job, start time.Duration) string {
			if job.Target == "B" && start < s(100) {
				return "redis down"
			}
			return ""
		})
		h.wantState("A", StateIdle, -1)
		h.signal(KindGrowth, false, "A")
		st := h.wantState("A", StateDebouncing, s(5))
		if st.NextDue.Sub(h.t0) != s(5) || st.PendingSignals != 1 {
			t.Errorf("debouncing: %+v", st)
		}
		h.at(s(6))
		st = h.wantState("A", StateRunning, -1)
		if st.RunningSince.Sub(h.t0) != s(5) {
			t.Errorf("running since %v", st.RunningSince.Sub(h.t0))
		}
		h.at(s(16))
		h.signal(KindGrowth, false, "A")
		st = h.wantState("A", StateCooldown, s(45))
		if st.NextDue.Sub(h.t0) != s(65) { // cooldown ends at 45, the next token comes at 65
			t.Errorf("next due %v, want 65s", st.NextDue.Sub(h.t0))
		}
		h.at(s(46))
		h.wantState("A", StateRateLimited, s(65))
		h.at(s(66))
		h.wantState("A", StateRunning, -1)
		h.at(s(70))
		h.signal(KindDisk, true, "B")
		h.wantState("B", StateWaitingForSlot, -1)
		h.at(s(86))
		st = h.wantState("B", StateBackingOff, s(125)) // failed at 85, +40 (cooldown only to 115)
		if st.ConsecutiveFailures != 1 || st.LastReport == nil || st.LastReport.Error != "redis down" {
			t.Errorf("backing off: %+v", st)
		}
		h.at(s(126))
		h.wantState("B", StateRunning, -1)
		h.at(s(200))
		h.wantState("A", StateIdle, -1)
		st = h.wantState("B", StateIdle, -1)
		if st.ConsecutiveFailures != 0 {
			t.Errorf("failures %d after success", st.ConsecutiveFailures)
		}
		h.wantStarts("A", s(5), s(65))
		h.wantStarts("B", s(75), s(125))
	})
}

// replies collects Reply calls with their virtual time.
type replies struct {
	t0 time.Time
	mu sync.Mutex
	at []time.Duration
	r  []backends.Report
}

func (r *replies) fn(rep backends.Report) {
	r.mu.Lock()
	r.at = append(r.at, time.Since(r.t0))
	r.r = append(r.r, rep)
	r.mu.Unlock()
}

func (r *replies) get() ([]time.Duration, []backends.Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.at), slices.Clone(r.r)
}

func TestReplyComesFromARunStartedAfterTheSignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{"a": {}, "b": {Debounce: s(5)}}}
		h := start(t, cfg, s(10))
		defer h.stop()
		h.signal(KindGrowth, false, "a") // a runs 0-10

		during := &replies{t0: h.t0}
		h.at(s(5))
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, Targets: []string{"a"}, Reply: during.fn})
		h.at(s(10))
		if at, _ := during.get(); len(at) != 0 {
			t.Fatalf("reply at %v from the run in progress when the signal came", at)
		}
		h.at(s(30))
		at, reps := during.get()
		if !slices.Equal(at, []time.Duration{s(20)}) || reps[0].StartedAt.Sub(h.t0) != s(10) || reps[0].Trigger != KindNATS {
			t.Errorf("reply at %v report %+v, want once at 20s of the run started at 10s", at, reps)
		}

		// Several targets, a duplicate and an unknown one: one reply each.
		multi := &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, Targets: []string{"a", "b", "a", "nope"}, Reply: multi.fn})
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, Targets: []string{"nope"}})
		synctest.Wait()
		h.at(s(100))
		_, reps = multi.get()
		got := map[string]string{}
		for _, r := range reps {
			got[r.Target] += "[" + r.Error + "]"
			if r.Error == "" && r.StartedAt.Sub(h.t0) != s(30) {
				t.Errorf("%s started at %v, want 30s", r.Target, r.StartedAt.Sub(h.t0))
			}
		}
		if want := map[string]string{"a": "[]", "b": "[]", "nope": "[unknown target]"}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("replies %v, want %v", got, want)
		}
		if n := h.logs.Count("signal for unknown target"); n != 1 {
			t.Errorf("%d unknown-target warnings, want 1", n)
		}

		// A routine reply waits for the debounce.
		routine := &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindGrowth, Targets: []string{"b"}, Reply: routine.fn})
		h.at(s(200))
		at, reps = routine.get()
		if !slices.Equal(at, []time.Duration{s(115)}) || reps[0].StartedAt.Sub(h.t0) != s(105) {
			t.Errorf("routine reply at %v report %+v", at, reps)
		}
	})
}

func TestDryRunIsNeverMerged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{
			"a": {Debounce: s(5), Cooldown: s(30)},
			"b": {Cooldown: s(30)},
		}}
		h := start(t, cfg, s(2))
		defer h.stop()
		h.signal(KindGrowth, false, "a")
		h.at(s(1))
		dry := &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, DryRun: true, Targets: []string{"a"}, Reply: dry.fn})
		h.at(s(20))
		jobs := h.r.allJobs()
		if len(jobs) != 2 || !jobs[0].DryRun || jobs[0].Start != s(1) || jobs[1].DryRun || jobs[1].Start != s(5) {
			t.Fatalf("jobs %+v, want dry at 1s then real at 5s", jobs)
		}
		if _, reps := dry.get(); len(reps) != 1 || !reps[0].DryRun {
			t.Errorf("dry replies %+v", reps)
		}

		// A dry run is not a compaction: it neither moves the cooldown nor
		// replaces LastReport.
		h.signal(KindNATS, true, "b") // real, 20-22
		h.at(s(22))
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, DryRun: true, Targets: []string{"b"}}) // 22-24
		h.at(s(30))
		h.wantStarts("b", s(20), s(22))
		if lr := h.status("b").LastReport; lr == nil || lr.DryRun || lr.StartedAt.Sub(h.t0) != s(20) {
			t.Errorf("LastReport %+v, want the real run of 20s", lr)
		}
		h.signal(KindGrowth, false, "b")
		h.wantState("b", StateCooldown, s(52)) // 30s after the real run's end, 22
		h.at(s(60))
		h.wantStarts("b", s(20), s(22), s(52))
	})
}

func TestScanAndUrgentMergeIntoPendingRealRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Debounce: s(5)}), s(2))
		defer h.stop()
		first, second := &replies{t0: h.t0}, &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindGrowth, Reason: "grew", Targets: []string{"a"}, Reply: first.fn})
		h.at(s(1))
		h.e.Signal(Signal{Kind: KindNATS, Reason: "pre-migration", Urgent: true, Scan: true, Targets: []string{"a"}, Reply: second.fn})
		h.at(s(50))
		jobs := h.r.allJobs()
		want := executor.Job{Target: "a", Trigger: KindNATS, Reason: "pre-migration", Scan: true}
		if len(jobs) != 1 || jobs[0].Job != want || jobs[0].Start != s(1) {
			t.Fatalf("jobs %+v, want one %+v at 1s", jobs, want)
		}
		for _, r := range []*replies{first, second} {
			if at, _ := r.get(); !slices.Equal(at, []time.Duration{s(3)}) {
				t.Errorf("reply at %v, want 3s", at)
			}
		}
		if h.obs.coalesced["a"] != 1 {
			t.Errorf("coalesced %d, want 1", h.obs.coalesced["a"])
		}
	})
}

func TestUpdateAddsRemovesAndChangesTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{
			"a": {Debounce: s(5)},
			"b": {Debounce: s(10)},
		}}
		h := start(t, cfg, s(1))
		defer h.stop()
		rb := &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindNATS, Targets: []string{"b"}, Reply: rb.fn})
		h.at(s(2))
		h.e.Update(Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{
			"a": {Debounce: s(20)},
			"c": {Debounce: s(1)},
		}})
		synctest.Wait()
		if at, reps := rb.get(); !slices.Equal(at, []time.Duration{s(2)}) || reps[0].Error != ErrTargetRemoved.Error() {
			t.Errorf("removed target's reply at %v: %+v", at, reps)
		}
		var names []string
		for _, st := range h.e.Status() {
			names = append(names, st.Target)
		}
		if !slices.Equal(names, []string{"a", "c"}) {
			t.Errorf("status targets %v, want [a c]", names)
		}
		unknown := &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindNATS, Targets: []string{"b"}, Reply: unknown.fn})
		if _, reps := unknown.get(); len(reps) != 1 || reps[0].Error != "unknown target" {
			t.Errorf("signal for removed target: %+v", reps)
		}
		h.at(s(3))
		h.signal(KindGrowth, false, "c", "a")
		h.at(s(100))
		h.wantStarts("b")
		h.wantStarts("c", s(4))
		h.wantStarts("a", s(23)) // the new debounce

		// A debounce changed while a signal is pending applies to it.
		h.signal(KindGrowth, false, "a")
		h.at(s(101))
		h.e.Update(Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{"a": {Debounce: s(2)}, "c": {}}})
		synctest.Wait()
		h.at(s(110))
		h.wantStarts("a", s(23), s(102))

		// Removing a target while it runs: the run finishes, a reply waiting
		// for the follow-up gets the error, and it can come back.
		h.r.mu.Lock()
		h.r.dur["a"] = s(50)
		h.r.mu.Unlock()
		h.signal(KindNATS, true, "a") // runs 110-160
		follow := &replies{t0: h.t0}
		h.at(s(111))
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, Targets: []string{"a"}, Reply: follow.fn})
		h.at(s(112))
		h.e.Update(Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{"c": {}}})
		synctest.Wait()
		if _, reps := follow.get(); len(reps) != 1 || reps[0].Error != ErrTargetRemoved.Error() {
			t.Errorf("follow-up reply: %+v", reps)
		}
		h.at(s(200))
		h.e.Update(Config{MaxConcurrent: 2, Targets: map[string]TargetSettings{"a": {}, "c": {}}})
		h.signal(KindNATS, true, "a")
		h.at(s(300))
		h.wantStarts("a", s(23), s(102), s(110), s(200))
		if jobs := h.r.allJobs(); len(jobs) < 2 || jobs[len(jobs)-2].End != s(160) || jobs[len(jobs)-2].Cancelled {
			t.Errorf("the removed target's run did not finish: %+v", jobs[len(jobs)-2])
		}
	})
}

func TestUpdateRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		targets := map[string]TargetSettings{"a": {}, "b": {}, "c": {}}
		h := start(t, Config{MaxConcurrent: 5, Targets: targets}, s(1)) // Rate 0: unlimited
		defer h.stop()
		h.signal(KindGrowth, false, "a", "b", "c")
		h.wantStarts("", 0, 0, 0)
		h.at(s(10))
		h.e.Update(Config{MaxConcurrent: 5, Rate: 60, Burst: 1, Targets: targets})
		h.signal(KindGrowth, false, "a", "b", "c")
		h.at(s(200))
		h.wantStarts("", 0, 0, 0, s(10), s(70), s(130))
	})
}

func TestShutdownWaitsThenCancelsAtDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{}), s(100))
		h.signal(KindGrowth, false, "a")
		pend := &replies{t0: h.t0}
		h.at(s(1))
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, Targets: []string{"a"}, Reply: pend.fn})
		h.at(s(5))
		errc := make(chan error, 1)
		var returned time.Duration
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s(10))
			defer cancel()
			err := h.e.Shutdown(ctx)
			returned = time.Since(h.t0)
			errc <- err
		}()
		synctest.Wait()
		if at, reps := pend.get(); !slices.Equal(at, []time.Duration{s(5)}) || reps[0].Error != ErrClosed.Error() {
			t.Errorf("pending reply at %v: %+v", at, reps)
		}
		after := &replies{t0: h.t0}
		h.e.Signal(Signal{Kind: KindNATS, Urgent: true, Targets: []string{"a"}, Reply: after.fn})
		if _, reps := after.get(); len(reps) != 1 || reps[0].Error != ErrClosed.Error() {
			t.Errorf("signal after shutdown: %+v", reps)
		}
		err := <-errc
		if !errors.Is(err, context.DeadlineExceeded) || returned != s(15) {
			t.Errorf("Shutdown = %v at %v, want deadline exceeded at 15s", err, returned)
		}
		jobs := h.r.allJobs()
		if len(jobs) != 1 || !jobs[0].Cancelled || jobs[0].End != s(15) {
			t.Errorf("jobs %+v, want one cancelled at 15s", jobs)
		}
		if err := <-h.errc; err != nil {
			t.Errorf("Run = %v", err)
		}
		if err := h.e.Run(context.Background()); !errors.Is(err, ErrRunning) {
			t.Errorf("second Run = %v", err)
		}
		h.cancel()
		h.r.check(t)
	})
}

func TestShutdownWaitsForRunningJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{}), s(3))
		h.signal(KindGrowth, false, "a")
		h.at(s(1))
		ctx, cancel := context.WithTimeout(context.Background(), s(10))
		defer cancel()
		if err := h.e.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown = %v", err)
		}
		if now := time.Since(h.t0); now != s(3) {
			t.Errorf("Shutdown returned at %v, want 3s (job end)", now)
		}
		if jobs := h.r.allJobs(); len(jobs) != 1 || jobs[0].Cancelled {
			t.Errorf("jobs %+v", jobs)
		}
		if err := <-h.errc; err != nil {
			t.Errorf("Run = %v", err)
		}
		h.cancel()
	})
}

func TestRunContextCancelStopsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{}), s(100))
		h.signal(KindGrowth, false, "a")
		h.at(s(1))
		h.stop()
		if now := time.Since(h.t0); now != s(1) {
			t.Errorf("stopped at %v, want 1s", now)
		}
		if jobs := h.r.allJobs(); len(jobs) != 1 || !jobs[0].Cancelled {
			t.Errorf("jobs %+v, want one cancelled", jobs)
		}
	})
}

func TestIdleEngineSleeps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{Debounce: s(5), Cooldown: s(30)}), s(1))
		defer h.stop()
		h.signal(KindGrowth, false, "a")
		h.at(s(60))
		h.e.mu.Lock()
		before := h.e.wakeups
		h.e.mu.Unlock()
		h.at(s(86400))
		h.e.mu.Lock()
		after := h.e.wakeups
		h.e.mu.Unlock()
		if after != before {
			t.Errorf("idle engine woke %d times in a day", after-before)
		}
		if before > 10 {
			t.Errorf("%d wakeups for one debounced run", before)
		}
	})
}

func TestSignalWithoutRunIsKeptUntilRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		r := newFakeRunner(t0, s(1))
		e := New(oneTarget("a", TargetSettings{}), r, nil)
		e.Signal(Signal{Kind: KindTimer, Targets: []string{"a"}})
		time.Sleep(s(10))
		if st := e.Status()[0]; st.State != StateWaitingForSlot || st.PendingSignals != 1 {
			t.Errorf("status %+v", st)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- e.Run(ctx) }()
		synctest.Wait()
		if got := r.starts("a"); !slices.Equal(got, []time.Duration{s(10)}) {
			t.Errorf("starts %v", got)
		}
		cancel()
		<-done
	})
}

// The executor is the Runner the daemon uses.
var _ Runner = (*executor.Executor)(nil)

// TestSkipAfterFailuresIsNotAFailure: skips (another node holds the target)
// between failures neither add to the failure count nor make the target
// stuck, nor lengthen its backoff, and are not logged as failures.
func TestSkipAfterFailuresIsNotAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, oneTarget("a", TargetSettings{BackoffBase: s(30), BackoffMax: s(600)}), s(1))
		defer h.stop()
		h.r.setFail(func(job executor.Job, start time.Duration) string {
			if start < s(50) {
				return "redis down"
			}
			return ""
		})
		h.r.mu.Lock()
		h.r.skip = func(executor.Job) string {
			if time.Since(h.r.t0) < s(300) {
				return "held by node-2"
			}
			return ""
		}
		h.r.mu.Unlock()
		h.signal(KindGrowth, false, "a")
		h.at(s(33))
		h.wantStarts("a", 0, s(31)) // two failures: the next retry is 60s after the end
		h.at(s(290))
		// Skipped retries at the unchanged backoff of two failures: 60s
		// after each end, not doubling and not stuck.
		h.wantStarts("a", 0, s(31), s(92), s(153), s(214), s(275))
		st := h.status("a")
		if st.ConsecutiveFailures != 2 || st.Stuck || st.LastReport == nil || st.LastReport.Skipped == "" {
			t.Errorf("after skips: failures %d stuck %v last %+v, want 2, false, skipped", st.ConsecutiveFailures, st.Stuck, st.LastReport)
		}
		if len(h.obs.stuck) != 0 {
			t.Errorf("Stuck hooks %v, want none", h.obs.stuck)
		}
		if n := h.logs.Count("compaction failed"); n != 2 {
			t.Errorf("%d lines say the compaction failed, want 2 (the skips are not failures)", n)
		}
		h.at(s(1000))
		h.wantStarts("a", 0, s(31), s(92), s(153), s(214), s(275), s(336))
		if st := h.wantState("a", StateIdle, -1); st.ConsecutiveFailures != 0 || st.Stuck {
			t.Errorf("after success: %+v", st)
		}
	})
}
