package main

import (
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/snapshot"
)

// StatusDoc is the JSON of GET /status, read by `watcher status`.
type StatusDoc struct {
	Node      string         `json:"node"`
	Version   string         `json:"version"`
	StartedAt time.Time      `json:"started_at"`
	Ready     bool           `json:"ready"`
	NotReady  []string       `json:"not_ready,omitempty"` // why not ready
	Targets   []TargetStatus `json:"targets"`
	Disks     []DiskStatus   `json:"disks,omitempty"`
	NATS      *ConnStatus    `json:"nats,omitempty"`
	Redis     []ConnStatus   `json:"redis,omitempty"`
	// Snapshots are the backup snapshots this node holds.
	Snapshots []snapshot.Snapshot `json:"snapshots,omitempty"`
	// Warnings are the self-diagnosed signs of misconfiguration that
	// concern no single target.
	Warnings []string `json:"warnings,omitempty"`
}

// TargetStatus is one target in StatusDoc.
type TargetStatus struct {
	Name    string `json:"name"`
	Backend string `json:"backend"`
	// SizeBytes is the stored size; -1 when unknown.
	SizeBytes int64 `json:"size_bytes"`
	// State is why the target is not compacting now: idle, debouncing,
	// cooldown, rate_limited, waiting_for_slot, backing_off, running.
	State string `json:"state"`
	// Until is when State ends, when known.
	Until               *time.Time       `json:"until,omitempty"`
	NextDue             *time.Time       `json:"next_due,omitempty"`
	PendingSignals      int              `json:"pending_signals"`
	Compacting          bool             `json:"compacting"`
	Stuck               bool             `json:"stuck"`
	ConsecutiveFailures int              `json:"consecutive_failures"`
	LastReport          *backends.Report `json:"last_report,omitempty"`
	LastSuccess         *time.Time       `json:"last_success,omitempty"`
	// Retention is the reclaimable estimate and the age deadline (absent
	// when the retention trigger does not watch the target).
	Retention *RetentionStatus `json:"retention,omitempty"`
	// Progress is the progress toward each trigger in words: "grew 12 MiB
	// of 64 MiB; 4 % reclaimable of 10 %; oldest record 6d2h, limit 7d:
	// due in 21h".
	Progress string `json:"progress,omitempty"`
	// Why says in words why the target is not compacting now.
	Why      string   `json:"why,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// SnapshotsHeld counts the backup snapshots held for the target and
	// SnapshotPinnedBytes the bytes only they still link.
	SnapshotsHeld       int   `json:"snapshots_held"`
	SnapshotPinnedBytes int64 `json:"snapshot_pinned_bytes"`
}

// DiskStatus is one filesystem holding file targets.
type DiskStatus struct {
	Mountpoint         string   `json:"mountpoint"`
	UsedPercent        float64  `json:"used_percent"`
	UnderPressure      bool     `json:"under_pressure"`
	Predicted          bool     `json:"predicted"`
	NothingReclaimable bool     `json:"nothing_reclaimable"`
	Targets            []string `json:"targets"`
}

// ConnStatus is the state of a connection to NATS or a Redis server.
type ConnStatus struct {
	Addr      string `json:"addr"`
	Connected bool   `json:"connected"`
	Detail    string `json:"detail,omitempty"`
}
