package main

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
)

// Warning kinds of the self-diagnosis: the `kind` label of
// papyra_compactor_warnings.
const (
	warnIneffective   = "ineffective_compaction"
	warnNoRetention   = "no_retention"
	warnTimerTooSlow  = "timer_slower_than_retention"
	warnNothingToFree = "disk_pressure_nothing_reclaimable"
	warnStuck         = "stuck"
)

// ineffectiveRuns is how many compactions in a row reclaiming < 1 % while
// the size grows make a target "ineffective".
const ineffectiveRuns = 3

// diagnosis watches reports for the seed's warning signs that only show at
// run time: a target that keeps growing while its compactions reclaim almost
// nothing. The static signs come from the config; status combines both.
type diagnosis struct {
	metrics *executor.Metrics
	log     *slog.Logger

	mu      sync.Mutex
	streak  map[string]int   // consecutive ineffective compactions
	lastBef map[string]int64 // before_bytes of the previous compaction
	active  map[string]map[string]string
	success map[string]time.Time // end of the last successful real compaction
}

func newDiagnosis(m *executor.Metrics, log *slog.Logger) *diagnosis {
	return &diagnosis{metrics: m, log: log, streak: map[string]int{},
		lastBef: map[string]int64{}, active: map[string]map[string]string{},
		success: map[string]time.Time{}}
}

// observe is subscribed to the executor's reports.
func (g *diagnosis) observe(r backends.Report) {
	if r.Error != "" || r.Skipped != "" || r.DryRun || r.BeforeBytes == nil || r.ReclaimedBytes == nil {
		return
	}
	g.mu.Lock()
	g.success[r.Target] = r.StartedAt.Add(time.Duration(r.DurationMS) * time.Millisecond)
	before := *r.BeforeBytes
	prev, seen := g.lastBef[r.Target]
	g.lastBef[r.Target] = before
	ineffective := before > 0 && float64(*r.ReclaimedBytes) < 0.01*float64(before) && (!seen || before > prev)
	if ineffective {
		g.streak[r.Target]++
	} else {
		g.streak[r.Target] = 0
	}
	n := g.streak[r.Target]
	g.mu.Unlock()
	g.set(r.Target, warnIneffective, n >= ineffectiveRuns,
		fmt.Sprintf("size keeps growing while the last %d compactions reclaimed < 1%%: retention is likely missing or too loose", n))
}

// set turns a warning on or off, logging once when it appears and keeping
// the metric in step.
func (g *diagnosis) set(target, kind string, on bool, text string) {
	g.mu.Lock()
	m := g.active[target]
	_, was := m[kind]
	if on {
		if m == nil {
			m = map[string]string{}
			g.active[target] = m
		}
		m[kind] = text
	} else {
		delete(m, kind)
	}
	g.mu.Unlock()
	if on != was {
		g.metrics.SetWarning(target, kind, on)
		if on {
			g.log.Warn("self-diagnosis: "+text, "target", target, "warning", kind)
		} else {
			g.log.Info("self-diagnosis: warning cleared", "target", target, "warning", kind)
		}
	}
}

// warnings returns the active warnings of a target.
func (g *diagnosis) warnings(target string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, k := range []string{warnNoRetention, warnTimerTooSlow, warnIneffective, warnNothingToFree, warnStuck} {
		if t, ok := g.active[target][k]; ok {
			out = append(out, t)
		}
	}
	return out
}

// lastSuccess is when the last successful real compaction of target ended.
func (g *diagnosis) lastSuccess(target string) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.success[target]
}

// forget drops a removed target's warnings.
func (g *diagnosis) forget(target string) {
	g.mu.Lock()
	delete(g.active, target)
	delete(g.streak, target)
	delete(g.lastBef, target)
	delete(g.success, target)
	g.mu.Unlock()
}
