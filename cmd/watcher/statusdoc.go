package main

import (
	"time"

	"github.com/papyra/watcher/backends"
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
	Warnings            []string         `json:"warnings,omitempty"`
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
