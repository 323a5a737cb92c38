package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

// RetentionStatus is what /status shows of a target's retention: the
// retention trigger's last estimate and when the age limit falls due.
type RetentionStatus struct {
	// EstimatedAt is when the estimate was taken.
	EstimatedAt        *time.Time `json:"estimated_at,omitempty"`
	ReclaimableBytes   int64      `json:"reclaimable_bytes"`
	ReclaimableRecords int64      `json:"reclaimable_records"`
	// ReclaimableRatio is reclaimable_bytes over the target's bytes (0-1).
	ReclaimableRatio float64 `json:"reclaimable_ratio"`
	// MinReclaimableRatio and MinReclaimableBytes are the thresholds of
	// [triggers.retention].
	MinReclaimableRatio float64 `json:"min_reclaimable_ratio"`
	MinReclaimableBytes int64   `json:"min_reclaimable_bytes"`
	// OldestRecordAgeSeconds is the age of the oldest record (0: none).
	OldestRecordAgeSeconds float64 `json:"oldest_record_age_seconds"`
	// MaxAgeSeconds is the target's max_age_seconds (absent: no age limit).
	MaxAgeSeconds *float64 `json:"max_age_seconds,omitempty"`
	// AgeDueAt is when the age limit makes the target due: when the oldest
	// record passes max_age_seconds + age_slack, or later when nothing can
	// be removed before (AgeNote says why).
	AgeDueAt *time.Time `json:"age_due_at,omitempty"`
	// AgeNote says why AgeDueAt is later than the oldest record's limit.
	AgeNote string `json:"age_note,omitempty"`
	// Error is why the last estimate failed.
	Error string `json:"error,omitempty"`
}

// retentionStatus builds the retention part of a target's status and the
// progress toward each trigger in words.
func retentionStatus(t TargetConfig, g *triggers.GrowthStatus, r *triggers.RetentionStatus, now time.Time) (*RetentionStatus, string) {
	var parts []string
	if g != nil { // min_bytes = 0 and min_ratio = 0 is growth at its most eager, not off
		need := max(*t.Triggers.Growth.MinBytes, int64(*t.Triggers.Growth.MinRatio*float64(g.Baseline)))
		parts = append(parts, fmt.Sprintf("grew %s of %s", humanize.IBytes(uint64(max(g.Bytes-g.Baseline, 0))), humanize.IBytes(uint64(need))))
	}
	if r == nil {
		if t.Triggers.Retention.Interval.Duration == 0 {
			parts = append(parts, "retention trigger off")
		}
		return nil, strings.Join(parts, "; ")
	}
	rs := &RetentionStatus{MinReclaimableRatio: r.Settings.MinReclaimableRatio,
		MinReclaimableBytes: r.Settings.MinReclaimableBytes, MaxAgeSeconds: t.Retention.MaxAgeSeconds, Error: r.Error,
		AgeNote: r.AgeNote}
	if !r.Deadline.IsZero() {
		rs.AgeDueAt = timePtr(r.Deadline)
	}
	e := r.Estimate
	if e == nil {
		if r.Error != "" {
			parts = append(parts, "reclaimable unknown: "+r.Error)
		} else {
			parts = append(parts, "reclaimable not yet estimated")
		}
		return rs, strings.Join(parts, "; ")
	}
	rs.EstimatedAt = timePtr(e.At)
	rs.ReclaimableBytes, rs.ReclaimableRecords = e.ReclaimableBytes, e.ReclaimableRecords
	rs.ReclaimableRatio = e.ReclaimableRatio()
	rs.OldestRecordAgeSeconds = e.OldestAge(now).Seconds()
	if t.Retention.MaxRecords != nil || t.Retention.MaxTotalBytes != nil || e.ReclaimableBytes > 0 {
		parts = append(parts, fmt.Sprintf("%.0f %% reclaimable of %.0f %%", 100*rs.ReclaimableRatio, 100*rs.MinReclaimableRatio))
	}
	if ma := t.Retention.MaxAgeSeconds; ma != nil {
		limit := time.Duration(*ma * float64(time.Second))
		switch {
		case e.Oldest.IsZero():
			parts = append(parts, fmt.Sprintf("no record, limit %s", statusRoughDuration(limit)))
		case r.Deadline.After(now):
			note := ""
			if r.AgeNote != "" {
				note = " (" + r.AgeNote + ")"
			}
			parts = append(parts, fmt.Sprintf("oldest record %s, limit %s: due in %s%s",
				statusRoughDuration(e.OldestAge(now)), statusRoughDuration(limit), statusRoughDuration(r.Deadline.Sub(now)), note))
		default:
			parts = append(parts, fmt.Sprintf("oldest record %s, limit %s: due now",
				statusRoughDuration(e.OldestAge(now)), statusRoughDuration(limit)))
		}
	}
	return rs, strings.Join(parts, "; ")
}

// whyText says in words why a target is not compacting now.
func whyText(t TargetStatus, now time.Time) string {
	until := ""
	if t.Until != nil {
		until = " " + statusAt(*t.Until, now, "until")
	}
	switch t.State {
	case policy.StateRunning:
		return "compacting now"
	case policy.StateDebouncing:
		return "waiting for writes to go quiet (debounce)" + until
	case policy.StateCooldown:
		return "cooling down after its last compaction" + until
	case policy.StateRateLimited:
		return "due, held by the rate limit" + until
	case policy.StateBackingOff:
		return fmt.Sprintf("backing off after %d failed compactions%s", t.ConsecutiveFailures, until)
	case policy.StateWaitingForSlot:
		return "due, waiting for a compaction slot (max_concurrent)"
	}
	if t.Progress == "" {
		return "nothing is due"
	}
	if strings.Contains(t.Progress, ": due now") {
		// Signalled, not yet picked up (or held after a compaction that
		// removed nothing): "nothing is due" would contradict the progress.
		return "retention is due, not started yet: " + t.Progress
	}
	return "nothing is due: " + t.Progress
}
