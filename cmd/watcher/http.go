package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

// handler serves /metrics, /healthz, /readyz and /status. Nothing it serves
// changes state.
func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		reasons := d.notReady()
		if len(reasons) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+strings.Join(reasons, "; "))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(d.status(r.Context()))
	})
	return mux
}

// notReady says why the daemon is not ready: still starting, or a
// configured NATS or Redis is unreachable.
func (d *daemon) notReady() []string {
	var reasons []string
	if !d.ready.Load() {
		reasons = append(reasons, "starting or stopping")
	}
	if d.nats != nil {
		if ok, detail := d.nats.State(); !ok {
			reasons = append(reasons, "nats unreachable: "+detail)
		}
	}
	for _, s := range d.redisMem.State() {
		if !s.Connected {
			reasons = append(reasons, fmt.Sprintf("redis %s unreachable: %s", s.Addr, s.Err))
		}
	}
	return reasons
}

// status assembles /status.
func (d *daemon) status(ctx context.Context) StatusDoc {
	cfg := d.config()
	d.updateDiagnosis()
	ver, _ := buildVersion()
	doc := StatusDoc{Node: cfg.Watcher.Node, Version: ver, StartedAt: d.started.UTC(),
		NotReady: d.notReady()}
	doc.Ready = len(doc.NotReady) == 0
	sizes := d.statAll(ctx)
	byName := map[string]policy.TargetStatus{}
	for _, s := range d.engine.Status() {
		byName[s.Target] = s
	}
	timerDue := d.timer.Due()
	growthSt := map[string]*triggers.GrowthStatus{}
	for _, g := range d.growth.Status() {
		growthSt[g.Target] = &g
	}
	retSt := d.ret.Status()
	now := time.Now()
	usage := d.snaps.Usage()
	for _, t := range cfg.Targets {
		ps := byName[t.Name]
		ts := TargetStatus{Name: t.Name, Backend: t.Backend, SizeBytes: sizes[t.Name],
			State: string(ps.State), PendingSignals: ps.PendingSignals, Stuck: ps.Stuck,
			Compacting: ps.State == policy.StateRunning, ConsecutiveFailures: ps.ConsecutiveFailures,
			LastReport: ps.LastReport, Warnings: d.diag.warnings(t.Name),
			SnapshotsHeld: usage[t.Name].Held, SnapshotPinnedBytes: usage[t.Name].PinnedBytes}
		if ts.State == "" {
			ts.State = string(policy.StateIdle)
		}
		if !ps.Until.IsZero() {
			ts.Until = timePtr(ps.Until)
		}
		if !ps.NextDue.IsZero() {
			ts.NextDue = timePtr(ps.NextDue)
		} else if due, ok := timerDue[t.Name]; ok && !due.IsZero() {
			ts.NextDue = timePtr(due) // nothing pending: the fallback timer is next
		}
		if ls := d.diag.lastSuccess(t.Name); !ls.IsZero() {
			ts.LastSuccess = timePtr(ls)
		}
		var rp *triggers.RetentionStatus
		if r, ok := retSt[t.Name]; ok {
			rp = &r
		}
		ts.Retention, ts.Progress = retentionStatus(t, growthSt[t.Name], rp, now)
		ts.Why = whyText(ts, now)
		doc.Targets = append(doc.Targets, ts)
	}
	for _, p := range d.disk.Pressure() {
		doc.Disks = append(doc.Disks, DiskStatus{Mountpoint: p.Mountpoint, UsedPercent: p.UsedPercent,
			UnderPressure: p.UnderPressure, Predicted: p.Predicted,
			NothingReclaimable: p.NothingReclaimable, Targets: p.Targets})
		if p.UnderPressure && p.NothingReclaimable {
			doc.Warnings = append(doc.Warnings, fmt.Sprintf("disk pressure on %s (%.1f%% used) persists with nothing left to reclaim", p.Mountpoint, p.UsedPercent))
		}
	}
	if d.nats != nil {
		ok, detail := d.nats.State()
		doc.NATS = &ConnStatus{Addr: triggers.RedactURLs(cfg.NATS.URL), Connected: ok, Detail: detail}
	}
	for _, s := range d.redisMem.State() {
		doc.Redis = append(doc.Redis, ConnStatus{Addr: s.Addr, Connected: s.Connected, Detail: s.Err})
	}
	doc.Snapshots = d.snaps.List()
	return doc
}

// updateDiagnosis refreshes the warnings that come from config, policy and
// disk state (the report-driven ones update themselves).
func (d *daemon) updateDiagnosis() {
	cfg := d.config()
	stuck := map[string]bool{}
	for _, s := range d.engine.Status() {
		stuck[s.Target] = s.Stuck
	}
	starved := map[string]string{}
	for _, p := range d.disk.Pressure() {
		if p.UnderPressure && p.NothingReclaimable {
			for _, t := range p.Targets {
				starved[t] = p.Mountpoint
			}
		}
	}
	for _, t := range cfg.Targets {
		d.diag.set(t.Name, warnNoRetention, t.Retention.IsZero() && t.Backend != backends.KindMemory,
			"no retention: compaction only drops lines that are not records")
		slow := false
		if ma := t.Retention.MaxAgeSeconds; ma != nil {
			iv := t.Triggers.Timer.Interval.Duration
			slow = iv > 0 && iv.Seconds() > *ma
		}
		d.diag.set(t.Name, warnTimerTooSlow, slow,
			fmt.Sprintf("timer interval %s is longer than max_age_seconds: compaction should run more often than retention thresholds", t.Triggers.Timer.Interval.Duration))
		mp, ok := starved[t.Name]
		d.diag.set(t.Name, warnNothingToFree, ok, "disk pressure on "+mp+" persists with nothing left to reclaim")
		d.diag.set(t.Name, warnStuck, stuck[t.Name], "stuck after repeated failures; retried at the backoff cap")
		d.metrics.SetStuck(t.Name, stuck[t.Name])
	}
	d.diagnoseRuntime(time.Now())
}

func timePtr(t time.Time) *time.Time {
	t = t.UTC()
	return &t
}
