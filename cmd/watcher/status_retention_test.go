package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

// TestStatusWhyAndProgress builds the why and progress of targets in
// several conditions the way /status does (retentionStatus, whyText) and
// renders them as `watcher status` prints them.
func TestStatusWhyAndProgress(t *testing.T) {
	cfg, _, err := parse(t, `
[[target]]
name = "events"
backend = "json"
path = "events.ndjson"
[target.retention]
max_records = 100000
max_age_seconds = 604800
[[target]]
name = "aged"
backend = "json"
path = "aged.ndjson"
[target.retention]
max_age_seconds = 3600
[[target]]
name = "broken"
backend = "json"
path = "broken.ndjson"
[target.retention]
max_age_seconds = 3600
[[target]]
name = "noret"
backend = "json"
path = "noret.ndjson"
[target.retention]
max_records = 10
[target.triggers.retention]
interval = "0s"
[[target]]
name = "held"
backend = "json"
path = "held.ndjson"
[target.retention]
max_age_seconds = 3600
[[target]]
name = "cool"
backend = "json"
path = "cool.ndjson"
[target.retention]
max_age_seconds = 3600
`)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]TargetConfig{}
	for _, tc := range cfg.Targets {
		byName[tc.Name] = tc
	}
	now := statusNow
	const mib = 1 << 20
	settings := triggers.RetentionSettings{Interval: 10 * time.Second, MinReclaimableRatio: 0.1, MinReclaimableBytes: mib}

	type input struct {
		name   string
		state  string
		until  *time.Time
		fails  int
		growth *triggers.GrowthStatus
		ret    *triggers.RetentionStatus
	}
	inputs := []input{
		{name: "events", state: policy.StateIdle,
			growth: &triggers.GrowthStatus{Bytes: 32 * mib, Baseline: 20 * mib},
			ret: &triggers.RetentionStatus{Settings: settings, Deadline: now.Add(21 * time.Hour),
				Estimate: &backends.Estimate{At: now.Add(-2 * time.Second), Records: 1000, Bytes: 100 * mib,
					ReclaimableBytes: 4 * mib, ReclaimableRecords: 40, Oldest: now.Add(-6*24*time.Hour - 2*time.Hour)}}},
		{name: "aged", state: policy.StateIdle,
			growth: &triggers.GrowthStatus{Bytes: mib, Baseline: mib},
			ret: &triggers.RetentionStatus{Settings: settings, Deadline: now.Add(-time.Minute), Signalled: true,
				Estimate: &backends.Estimate{At: now, Records: 10, Bytes: mib, ReclaimableBytes: mib / 2,
					ReclaimableRecords: 5, Oldest: now.Add(-2 * time.Hour)}}},
		{name: "broken", state: policy.StateBackingOff, until: tp(now.Add(90 * time.Second)), fails: 2,
			growth: &triggers.GrowthStatus{Bytes: 0, Baseline: 0},
			ret:    &triggers.RetentionStatus{Settings: settings, Error: "open broken.ndjson: permission denied"}},
		{name: "noret", state: policy.StateIdle, growth: &triggers.GrowthStatus{Bytes: 100, Baseline: 200}},
		{name: "held", state: policy.StateIdle,
			growth: &triggers.GrowthStatus{Bytes: mib, Baseline: mib},
			ret: &triggers.RetentionStatus{Settings: settings, Deadline: now.Add(30 * time.Minute),
				AgeNote:  "the last compaction left the oldest record",
				Estimate: &backends.Estimate{At: now, Records: 10, Bytes: mib, ReclaimableRecords: 1, Oldest: now.Add(-2 * time.Hour)}}},
		{name: "cool", state: policy.StateCooldown, until: tp(now.Add(20 * time.Second)),
			growth: &triggers.GrowthStatus{Bytes: 2 * mib, Baseline: 2 * mib},
			ret: &triggers.RetentionStatus{Settings: settings, Deadline: now.Add(50 * time.Minute),
				Estimate: &backends.Estimate{At: now, Records: 10, Bytes: 2 * mib, Oldest: now.Add(-10 * time.Minute)}}},
	}
	doc := StatusDoc{Node: "n", Ready: true, StartedAt: now.Add(-time.Hour)}
	for _, in := range inputs {
		ts := TargetStatus{Name: in.name, Backend: "json", SizeBytes: 1, State: in.state, Until: in.until,
			ConsecutiveFailures: in.fails}
		ts.Retention, ts.Progress = retentionStatus(byName[in.name], in.growth, in.ret, now)
		ts.Why = whyText(ts, now)
		doc.Targets = append(doc.Targets, ts)
	}
	var buf bytes.Buffer
	renderStatus(&buf, doc, now)
	out := buf.String()
	t.Logf("\n%s", out)

	for _, line := range []string{
		"events: nothing is due: grew 12 MiB of 64 MiB; 4 % reclaimable of 10 %; oldest record 6d2h, limit 7d: due in 21h",
		"aged: retention is due, not started yet: grew 0 B of 64 MiB; 50 % reclaimable of 10 %; oldest record 2h, limit 1h: due now",
		"broken: backing off after 2 failed compactions in 1m",
		"noret: nothing is due: grew 0 B of 64 MiB; retention trigger off",
		"cool: cooling down after its last compaction in 20s",
		"held: nothing is due: grew 0 B of 64 MiB; oldest record 2h, limit 1h: due in 30m (the last compaction left the oldest record)",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("output lacks line %q", line)
		}
	}

	// The same in the JSON of /status.
	get := func(name string) TargetStatus {
		for _, ts := range doc.Targets {
			if ts.Name == name {
				return ts
			}
		}
		t.Fatalf("no target %s", name)
		return TargetStatus{}
	}
	if p := get("broken").Progress; p != "grew 0 B of 64 MiB; reclaimable unknown: open broken.ndjson: permission denied" {
		t.Errorf("broken progress %q", p)
	}
	ev := get("events")
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	json.Unmarshal(raw, &back)
	ret, _ := back["retention"].(map[string]any)
	if back["why"] != ev.Why || back["progress"] != ev.Progress || ret == nil {
		t.Fatalf("/status JSON lacks why, progress or retention: %s", raw)
	}
	if ret["reclaimable_bytes"] != float64(4*mib) || ret["oldest_record_age_seconds"] != float64(6*86400+2*3600) ||
		ret["max_age_seconds"] != float64(604800) || ret["age_due_at"] == nil {
		t.Errorf("retention in /status JSON: %s", raw)
	}
}
