package triggers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// RetentionSettings is [triggers.retention]. Interval 0 turns the trigger
// off for the target.
type RetentionSettings struct {
	// Interval is how often the target's reclaimable estimate is refreshed.
	Interval time.Duration
	// MinReclaimableRatio and MinReclaimableBytes: the count and size
	// limits make the target due once both are reached.
	MinReclaimableRatio float64
	MinReclaimableBytes int64
	// AgeSlack is added to max_age_seconds: the target is due once its
	// oldest record is older than max_age_seconds + AgeSlack.
	AgeSlack time.Duration
}

// retentionStuckAfter: a signal still unanswered by a report after this many
// intervals is forgotten, and the target may be signalled again.
const retentionStuckAfter = 10

// retentionHold is the least time a target whose last compaction removed
// nothing is not signalled again for the same reason (Redis approximate
// trimming can leave old entries that no compaction removes).
const retentionHold = time.Minute

// retentionAgeHoldMax caps the age hold: a target whose compactions keep
// leaving its oldest record past the age limit (entries a Redis consumer
// group has not acknowledged, with trim_unacked off) is tried again after
// max(retentionHold, Interval), doubled after every such compaction up to
// this (or Interval, when longer).
const retentionAgeHoldMax = time.Hour

// ageHold is the age hold after n (≥ 1) consecutive compactions that left
// the oldest record in place.
func ageHold(n int, interval time.Duration) time.Duration {
	d := max(retentionHold, interval)
	limit := max(retentionAgeHoldMax, interval)
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// Retention is the retention trigger: it keeps an estimate of what each
// target's retention would remove now (backends.Estimator, refreshed every
// Interval, and at once after every compaction of the target) and emits a
// routine policy.KindRetention signal
//
//   - at the instant the oldest record passes max_age_seconds + AgeSlack:
//     a timer is set to that instant from the estimate, it is not found by
//     polling;
//   - when the reclaimable part reaches MinReclaimableRatio of the target
//     and MinReclaimableBytes.
//
// At Run every target is estimated at once. Once a target was signalled it
// is not signalled again until a compaction of it is observed (or
// retentionStuckAfter intervals passed); a compaction that removed nothing
// holds the target back for max(retentionHold, Interval).
//
// The age deadline is the instant something becomes removable, not only
// the instant the oldest record passes the limit:
//
//   - when the estimate says nothing is reclaimable although the oldest
//     record is past the limit (a Redis approximate trim removes whole
//     stream nodes only), the deadline is the estimate's NextExpiry (when
//     the next whole node is past the limit) + AgeSlack;
//   - when a successful compaction left the oldest record where it was
//     while it was past the limit (what the estimator cannot see: entries a
//     Redis consumer group still holds), the next age signal waits
//     ageHold: max(retentionHold, Interval), doubling with every further
//     such compaction up to retentionAgeHoldMax. A change of the oldest
//     record ends the hold.
type Retention struct {
	logger *slog.Logger

	mu      sync.Mutex
	entries map[string]*retEntry
	wake    chan struct{}
}

// retEntry is the state of one target.
type retEntry struct {
	t          Target
	est        backends.Estimate
	hasEst     bool
	err        error
	estimated  time.Time // when est was taken
	refresh    time.Time // next refresh
	deadline   time.Time // age deadline: oldest + max_age + slack; zero when none
	signalled  time.Time // last signal, zero when none is waiting for a report
	holdUntil  time.Time
	lastSignal string // reason of the last signal

	// The age hold (see Retention).
	ageCheck     time.Time // the oldest record when a compaction ended with the age limit due; zero: nothing to check
	ageNoops     int       // consecutive compactions that left ageHeld in place
	ageHeld      time.Time // the oldest record they left
	ageHoldUntil time.Time // no age signal for ageHeld before this
	ageNote      string    // why deadline is later than the oldest record's limit; "" when it is not
}

// RetentionStatus is the state of one target for /status.
type RetentionStatus struct {
	Target   string             `json:"target"`
	Estimate *backends.Estimate `json:"estimate,omitempty"`
	Error    string             `json:"error,omitempty"`
	MaxAge   time.Duration      `json:"-"`
	// Deadline is when the age limit makes the target due: when its oldest
	// record passes max_age_seconds + age_slack, or later when nothing can
	// be removed before (AgeNote says why).
	Deadline time.Time `json:"deadline,omitzero"`
	// AgeNote says why Deadline is later than the oldest record's limit.
	AgeNote   string             `json:"age_note,omitempty"`
	Signalled bool               `json:"signalled"`
	Settings  RetentionSettings  `json:"-"`
	Limits    backends.Retention `json:"-"`
}

// Retention is a Source.
var _ Source = (*Retention)(nil)

// NewRetention returns the retention trigger for targets.
func NewRetention(targets []Target, logger *slog.Logger) *Retention {
	if logger == nil {
		logger = slog.Default()
	}
	r := &Retention{logger: logger.With("trigger", policy.KindRetention),
		entries: map[string]*retEntry{}, wake: make(chan struct{}, 1)}
	r.SetTargets(targets)
	return r
}

func retentionEnabled(t Target) bool {
	return t.Estimator != nil && t.Retention.Interval > 0 && !t.Limits.IsZero()
}

func (r *Retention) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// SetTargets replaces the target list; new and changed targets are
// estimated at once.
func (r *Retention) SetTargets(targets []Target) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := map[string]bool{}
	for _, t := range targets {
		if !retentionEnabled(t) {
			continue
		}
		keep[t.Name] = true
		e := r.entries[t.Name]
		if e == nil {
			e = &retEntry{}
			r.entries[t.Name] = e
		}
		if e.t.Estimator != t.Estimator || e.t.Retention != t.Retention || !sameLimits(e.t.Limits, t.Limits) {
			e.refresh = time.Time{}
			e.signalled, e.holdUntil = time.Time{}, time.Time{}
			e.ageCheck, e.ageNoops, e.ageHeld, e.ageHoldUntil = time.Time{}, 0, time.Time{}, time.Time{}
		}
		e.t = t
	}
	for name := range r.entries {
		if !keep[name] {
			delete(r.entries, name)
		}
	}
	r.poke()
}

func sameLimits(a, b backends.Retention) bool {
	eq := func(x, y *int64) bool { return x == nil && y == nil || x != nil && y != nil && *x == *y }
	ef := func(x, y *float64) bool { return x == nil && y == nil || x != nil && y != nil && *x == *y }
	return eq(a.MaxRecords, b.MaxRecords) && eq(a.MaxTotalBytes, b.MaxTotalBytes) && ef(a.MaxAgeSeconds, b.MaxAgeSeconds)
}

// Observe re-estimates a target at once after a real compaction of it and
// lets it be signalled again.
func (r *Retention) Observe(rep backends.Report) {
	if rep.DryRun {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[rep.Target]
	if e == nil {
		return
	}
	now := time.Now()
	e.signalled = time.Time{}
	e.refresh = time.Time{}
	if rep.Error == "" && rep.Skipped == "" && e.hasEst && !e.est.Oldest.IsZero() &&
		!e.deadline.IsZero() && !e.deadline.After(now) {
		// The age limit was due: the next estimate tells whether this
		// compaction removed the oldest record.
		e.ageCheck = e.est.Oldest
	}
	if rep.Error == "" && rep.Skipped == "" && rep.RemovedRecords == 0 && (rep.ReclaimedBytes == nil || *rep.ReclaimedBytes <= 0) {
		e.holdUntil = now.Add(max(retentionHold, e.t.Retention.Interval))
	} else {
		e.holdUntil = time.Time{}
	}
	r.poke()
}

// Status returns the state of every target the trigger watches.
func (r *Retention) Status() map[string]RetentionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]RetentionStatus, len(r.entries))
	for name, e := range r.entries {
		st := RetentionStatus{Target: name, Deadline: e.deadline, AgeNote: e.ageNote, Signalled: !e.signalled.IsZero(),
			Settings: e.t.Retention, Limits: e.t.Limits}
		if e.hasEst {
			est := e.est
			st.Estimate = &est
		}
		if e.err != nil {
			st.Error = e.err.Error()
		}
		out[name] = st
	}
	return out
}

// Estimates returns the last estimate of every target that has one (for the
// metrics and the disk trigger).
func (r *Retention) Estimates() map[string]backends.Estimate {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]backends.Estimate, len(r.entries))
	for name, e := range r.entries {
		if e.hasEst {
			out[name] = e.est
		}
	}
	return out
}

// Run estimates and emits until ctx is done, then returns nil.
func (r *Retention) Run(ctx context.Context, emit Emit) error {
	clock := time.NewTimer(time.Hour)
	defer clock.Stop()
	for {
		r.refreshDue(ctx, time.Now())
		sigs, next := r.evaluate(time.Now())
		for _, s := range sigs {
			emit(s)
		}
		if next.IsZero() {
			clock.Stop()
		} else {
			clock.Reset(max(time.Until(next), 0))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-clock.C:
		}
	}
}

// refreshDue estimates every target whose refresh or age deadline is due
// (a deadline once: the estimate taken at or after it is the one that
// decides). Estimators run without the lock held.
func (r *Retention) refreshDue(ctx context.Context, now time.Time) {
	type job struct {
		name string
		t    Target
	}
	var jobs []job
	r.mu.Lock()
	for name, e := range r.entries {
		if !e.refresh.After(now) || (!e.deadline.IsZero() && !e.deadline.After(now) && e.deadline.After(e.estimated)) {
			jobs = append(jobs, job{name, e.t})
		}
	}
	r.mu.Unlock()
	for _, j := range jobs {
		if ctx.Err() != nil {
			return
		}
		at := time.Now()
		ectx, cancel := context.WithTimeout(ctx, max(j.t.Retention.Interval, 5*time.Second))
		est, err := j.t.Estimator.Estimate(ectx, at, j.t.Limits)
		cancel()
		r.mu.Lock()
		e := r.entries[j.name]
		if e != nil && e.t.Estimator == j.t.Estimator {
			e.refresh = at.Add(j.t.Retention.Interval)
			e.err = err
			if errors.Is(err, backends.ErrBusy) {
				// A compaction holds the file for a moment: keep the
				// last estimate and look again soon.
				e.refresh, e.err = at.Add(min(j.t.Retention.Interval, time.Second)), nil
			} else if err != nil {
				r.logger.Debug("estimate failed", "target", j.name, "error", err)
			} else {
				e.est, e.hasEst, e.estimated = est, true, at
				r.ageDeadline(j.name, e, at)
			}
		}
		r.mu.Unlock()
	}
}

// ageDeadline sets e.deadline from e.est, taken at at: the instant the
// oldest record passes max_age_seconds + AgeSlack, or later when nothing can
// be removed before (see Retention). e.mu must be held.
func (r *Retention) ageDeadline(name string, e *retEntry, at time.Time) {
	est, slack := e.est, e.t.Retention.AgeSlack
	e.deadline, e.ageNote = time.Time{}, ""
	ma := e.t.Limits.MaxAgeSeconds
	if ma == nil || est.Oldest.IsZero() {
		e.ageCheck, e.ageNoops, e.ageHeld, e.ageHoldUntil = time.Time{}, 0, time.Time{}, time.Time{}
		return
	}
	base := est.Oldest.Add(time.Duration(*ma*float64(time.Second)) + slack)
	due := !base.After(at)
	if !e.ageCheck.IsZero() {
		if due && !est.Oldest.After(e.ageCheck) {
			e.ageNoops++
			e.ageHeld, e.ageHoldUntil = est.Oldest, at.Add(ageHold(e.ageNoops, e.t.Retention.Interval))
			r.logger.Info("a compaction left the oldest record past the age limit; holding the age trigger",
				"target", name, "oldest", est.Oldest, "compactions", e.ageNoops, "next_try", e.ageHoldUntil)
		} else {
			e.ageNoops, e.ageHeld, e.ageHoldUntil = 0, time.Time{}, time.Time{}
		}
		e.ageCheck = time.Time{}
	}
	if !e.ageHeld.IsZero() && !e.ageHeld.Equal(est.Oldest) {
		// The oldest record changed: the hold was about another one.
		e.ageNoops, e.ageHeld, e.ageHoldUntil = 0, time.Time{}, time.Time{}
	}
	e.deadline = base
	if !due {
		return
	}
	if next := est.NextExpiry.Add(slack); est.ReclaimableRecords == 0 && est.ReclaimableBytes == 0 &&
		!est.NextExpiry.IsZero() && next.After(at) {
		// The estimator knows that nothing is removable before NextExpiry.
		e.deadline = next
		e.ageNote = "nothing removable before then"
	}
	if e.ageHoldUntil.After(e.deadline) {
		e.deadline = e.ageHoldUntil
		e.ageNote = fmt.Sprintf("the last %d compactions left the oldest record", e.ageNoops)
		if e.ageNoops == 1 {
			e.ageNote = "the last compaction left the oldest record"
		}
	}
}

// evaluate returns the signals due at now and when to look again.
func (r *Retention) evaluate(now time.Time) ([]policy.Signal, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var sigs []policy.Signal
	var next time.Time
	later := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for name, e := range r.entries {
		later(e.refresh)
		if !e.hasEst {
			continue
		}
		if !e.signalled.IsZero() && now.Sub(e.signalled) >= retentionStuckAfter*e.t.Retention.Interval {
			e.signalled = time.Time{} // no report came: forget it
		}
		reason := retentionReason(e, now)
		if reason == "" {
			later(e.deadline)
			continue
		}
		if !e.signalled.IsZero() {
			later(e.signalled.Add(retentionStuckAfter * e.t.Retention.Interval))
			continue
		}
		if e.holdUntil.After(now) {
			later(e.holdUntil)
			continue
		}
		e.signalled, e.lastSignal = now, reason
		r.logger.Debug("retention due", "target", name, "reason", reason)
		sigs = append(sigs, policy.Signal{Kind: policy.KindRetention, Targets: []string{name}, Reason: reason, At: now})
	}
	return sigs, next
}

// retentionReason says why e is due at now; "" when it is not.
func retentionReason(e *retEntry, now time.Time) string {
	est, s := e.est, e.t.Retention
	if !e.deadline.IsZero() && !e.deadline.After(now) {
		return fmt.Sprintf("oldest record is %s old, past max_age_seconds %gs + slack %s",
			est.OldestAge(now).Round(time.Second), *e.t.Limits.MaxAgeSeconds, s.AgeSlack)
	}
	if (est.ReclaimableBytes > 0 || est.ReclaimableRecords > 0) && est.ReclaimableRatio() >= s.MinReclaimableRatio &&
		est.ReclaimableBytes >= s.MinReclaimableBytes {
		return fmt.Sprintf("%s (%.0f%%) reclaimable, %d records (min %.0f%% and %s)",
			humanize.IBytes(uint64(est.ReclaimableBytes)), 100*est.ReclaimableRatio(), est.ReclaimableRecords,
			100*s.MinReclaimableRatio, humanize.IBytes(uint64(s.MinReclaimableBytes)))
	}
	return ""
}
