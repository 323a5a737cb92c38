package policy

import (
	"slices"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
)

// States of a target in TargetStatus: why it is not compacting now.
const (
	// StateIdle: nothing pending.
	StateIdle = "idle"
	// StateDebouncing: waiting for signals to go quiet (debounce, max_wait).
	StateDebouncing = "debouncing"
	// StateCooldown: waiting for the cooldown after its last compaction,
	// which succeeded (or was skipped).
	StateCooldown = "cooldown"
	// StateRateLimited: due, waiting for a token of the rate limit.
	StateRateLimited = "rate_limited"
	// StateWaitingForSlot: due, waiting for one of max_concurrent slots
	// (or for the engine's loop to run).
	StateWaitingForSlot = "waiting_for_slot"
	// StateBackingOff: waiting out the backoff after failed compactions;
	// Until is when the next attempt may start (the end of the cooldown
	// instead, for a routine retry, if that is later). Urgent pressure
	// signals (disk, Redis memory) wait for it too.
	StateBackingOff = "backing_off"
	// StateRunning: a compaction (or dry run) of the target is in progress.
	StateRunning = "running"
)

// TargetStatus is the policy's view of one target.
type TargetStatus struct {
	// Target is the target's config name.
	Target string `json:"target"`
	// State is one of the State* constants.
	State string `json:"state"`
	// Until is when State ends; zero when not known (idle, running,
	// waiting_for_slot).
	Until time.Time `json:"until,omitzero"`
	// RunningSince is when the running compaction started (State running).
	RunningSince time.Time `json:"running_since,omitzero"`
	// PendingSignals counts the signals gathered for runs not yet started
	// (real and dry), including those that arrived during a running one.
	PendingSignals int `json:"pending_signals"`
	// Stuck is set after StuckAfter consecutive failures.
	Stuck bool `json:"stuck"`
	// ConsecutiveFailures counts failed compactions since the last success.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// LastReport is the report of the last real (not dry-run) compaction,
	// nil before the first.
	LastReport *backends.Report `json:"last_report"`
	// NextDue is when the next pending run is (or was) allowed to start by
	// debounce, max_wait, cooldown, backoff and the rate limit; zero when
	// nothing is pending or while the target runs.
	NextDue time.Time `json:"next_due,omitzero"`
}

// Status returns the state of every configured target, sorted by name.
func (e *Engine) Status() []TargetStatus {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()

	// The due runs, in the order the loop will start them: each routine one
	// needs its own token, so the k-th waits for k tokens.
	type queued struct {
		state   string
		until   time.Time
		nextDue time.Time
	}
	due, _ := e.plansLocked(now)
	queue := make(map[*target]queued, len(due))
	tokens := 0
	for _, pl := range due {
		if _, ok := queue[pl.t]; ok {
			continue
		}
		q := queued{state: StateWaitingForSlot, nextDue: pl.due}
		if pl.takesToken() {
			tokens++
			if w := e.tokenWait(now, tokens); w > 0 {
				q = queued{state: StateRateLimited, until: now.Add(w), nextDue: now.Add(w)}
			}
		}
		queue[pl.t] = q
	}

	out := make([]TargetStatus, 0, len(e.targets))
	for _, t := range e.targets {
		if t.removed {
			continue
		}
		st := TargetStatus{
			Target:              t.name,
			Stuck:               t.stuck,
			ConsecutiveFailures: t.failures,
		}
		if t.last != nil {
			r := *t.last
			st.LastReport = &r
		}
		for _, p := range []*pending{t.real, t.dry} {
			if p != nil {
				st.PendingSignals += p.signals
			}
		}
		if t.run != nil {
			st.State, st.RunningSince = StateRunning, t.run.started
		} else if q, ok := queue[t]; ok {
			st.State, st.Until, st.NextDue = q.state, q.until, q.nextDue
		} else if pl, ok := t.next(); ok {
			st.State, st.Until, st.NextDue = pl.state, pl.due, pl.due
			if pl.takesToken() {
				// The bucket as it will be then, if nothing else takes a token.
				if w := e.tokenWait(pl.due, 1); w > 0 {
					st.NextDue = pl.due.Add(w)
				}
			}
		} else {
			st.State = StateIdle
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b TargetStatus) int { return strings.Compare(a.Target, b.Target) })
	return out
}
