package triggers

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// timerMaxJitter caps TimerSettings.Jitter: a delay never drops below 10% of
// the interval, however the jitter is configured.
const timerMaxJitter = 0.9

// TimerOptions tunes a Timer. The zero value is the production setting.
type TimerOptions struct {
	// Rand returns a number in [0, 1) for the jitter; nil uses math/rand/v2.
	Rand func() float64
}

// Timer is the fallback trigger: it emits a routine policy.KindTimer signal
// for a target when nothing else compacted it within its interval.
//
// Jitter semantics: the delay before a target's timer fires is drawn
// uniformly from [Interval×(1−Jitter), Interval]. The configured interval is
// therefore an upper bound ("compact every target at least this often") and
// the jitter only spreads targets earlier, so that targets configured alike
// do not fire in lock step. Jitter is clamped to [0, 0.9].
//
// A timer is reset (a new delay drawn, counted from now) when it fires and
// when Observe sees a successful, real (not dry-run, not skipped) compaction
// of the target. Failed compactions do not reset it. Interval 0 turns the
// timer off for that target.
//
// Timer runs one goroutine and one time.Timer for all targets; it is idle
// between deadlines.
type Timer struct {
	logger *slog.Logger
	rand   func() float64

	mu      sync.Mutex
	entries map[string]*timerEntry // by target name
	started bool                   // Run has stamped the entries with the clock
	wake    chan struct{}
}

// timerEntry is the state of one target's timer.
type timerEntry struct {
	settings TimerSettings
	since    time.Time // last reset
	due      time.Time // since + drawn delay; zero when off
}

// Timer is a Source.
var _ Source = (*Timer)(nil)

// NewTimer returns a Timer for targets. Options are optional; at most the
// first is used.
func NewTimer(targets []Target, logger *slog.Logger, opts ...TimerOptions) *Timer {
	if logger == nil {
		logger = slog.Default()
	}
	var o TimerOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	t := &Timer{
		logger:  logger.With("trigger", policy.KindTimer),
		rand:    o.Rand,
		entries: make(map[string]*timerEntry),
		wake:    make(chan struct{}, 1),
	}
	t.SetTargets(targets)
	return t
}

// delay draws the delay of one timer period for s.
func (t *Timer) delay(s TimerSettings) time.Duration {
	j := min(max(s.Jitter, 0), timerMaxJitter)
	if j == 0 {
		return s.Interval
	}
	return s.Interval - time.Duration(float64(s.Interval)*j*t.rand())
}

// schedule sets e.due from e.since and its settings. t.mu is held.
func (t *Timer) schedule(e *timerEntry) {
	if e.settings.Interval <= 0 || !t.started {
		e.due = time.Time{}
		return
	}
	e.due = e.since.Add(t.delay(e.settings))
}

// poke wakes Run to recompute its deadline; it never blocks.
func (t *Timer) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// SetTargets replaces the target list. A new target's timer starts now; a
// target whose interval or jitter changed keeps the time of its last reset
// and draws a new delay from it (it fires at once if that is already past);
// a removed target's timer stops.
func (t *Timer) SetTargets(targets []Target) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	keep := make(map[string]bool, len(targets))
	for _, tg := range targets {
		keep[tg.Name] = true
		e, ok := t.entries[tg.Name]
		if !ok {
			e = &timerEntry{settings: tg.Timer, since: now}
			t.entries[tg.Name] = e
			t.schedule(e)
			continue
		}
		if e.settings != tg.Timer {
			e.settings = tg.Timer
			t.schedule(e)
		}
	}
	for name := range t.entries {
		if !keep[name] {
			delete(t.entries, name)
		}
	}
	t.poke()
}

// Observe resets the target's timer after a successful real compaction.
func (t *Timer) Observe(r backends.Report) {
	if r.DryRun || r.Error != "" || r.Skipped != "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[r.Target]
	if !ok {
		return
	}
	e.since = time.Now()
	t.schedule(e)
	t.poke()
}

// Due returns when each enabled target's timer fires next (for status).
// Targets whose timer is off are absent; before Run starts it is empty.
func (t *Timer) Due() map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]time.Time, len(t.entries))
	for name, e := range t.entries {
		if !e.due.IsZero() {
			out[name] = e.due
		}
	}
	return out
}

// Run emits timer signals until ctx is done, then returns nil.
func (t *Timer) Run(ctx context.Context, emit Emit) error {
	t.mu.Lock()
	now := time.Now()
	t.started = true
	for _, e := range t.entries {
		e.since = now
		t.schedule(e)
	}
	t.mu.Unlock()

	clock := time.NewTimer(time.Hour)
	defer clock.Stop()
	for {
		sigs, next := t.fire(time.Now())
		for _, s := range sigs {
			emit(s)
		}
		if next.IsZero() {
			clock.Stop()
		} else {
			clock.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			t.mu.Lock()
			t.started = false
			t.mu.Unlock()
			return nil
		case <-t.wake:
		case <-clock.C:
		}
	}
}

// fire resets every timer due at now and returns their signals, and the
// earliest deadline left (zero when none).
func (t *Timer) fire(now time.Time) ([]policy.Signal, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var sigs []policy.Signal
	var next time.Time
	for name, e := range t.entries {
		if e.due.IsZero() {
			continue
		}
		if !e.due.After(now) {
			sigs = append(sigs, policy.Signal{
				Kind:    policy.KindTimer,
				Targets: []string{name},
				Reason:  fmt.Sprintf("not compacted for %s (timer interval %s)", now.Sub(e.since).Round(time.Second), e.settings.Interval),
				At:      now,
			})
			t.logger.Debug("timer fired", "target", name, "interval", e.settings.Interval)
			e.since = now
			t.schedule(e)
		}
		if next.IsZero() || e.due.Before(next) {
			next = e.due
		}
	}
	return sigs, next
}
