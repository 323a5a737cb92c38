package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

// metricValue returns the value of the series (name and labels, as
// /metrics prints them) of m, or -1 when it is absent.
func metricValue(t *testing.T, m *executor.Metrics, series string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// TestStatusAndMetricsShowSnapshots: a backup snapshot shows in /status
// (the list, and per target the count and the bytes it pins once the
// target's file was compacted away) and in the metrics snapshots_held and
// snapshot_pinned_bytes; `watcher status` prints them; a release clears
// them all. A snapshot without a TTL is kept for snapshot_ttl (1h).
func TestStatusAndMetricsShowSnapshots(t *testing.T) {
	d, _, _ := diagDaemon(t, diagConfig)
	var data strings.Builder
	for i := range 40 {
		fmt.Fprintf(&data, `{"kind": "event", "system_id": "s", "actor_address": "local://a/0", "event_type": "Tick", "payload": {"seq": %d}, "timestamp": %d.0}`+"\n", i, time.Now().Unix())
	}
	if err := os.WriteFile("events.ndjson", []byte(data.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	size := int64(data.Len())
	ctx := context.Background()
	id := snapshot.NewID(time.Now())
	s, err := d.Take(ctx, id, triggers.Target{Name: "events", Backend: backends.KindJSON}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s.ExpiresAt == nil || time.Until(*s.ExpiresAt) < 59*time.Minute || time.Until(*s.ExpiresAt) > time.Hour {
		t.Fatalf("expires_at %v: want snapshot_ttl, 1h, from now", s.ExpiresAt)
	}

	held := func() (events, audit TargetStatus, doc StatusDoc) {
		t.Helper()
		doc = d.status(ctx)
		for _, ts := range doc.Targets {
			switch ts.Name {
			case "events":
				events = ts
			case "audit":
				audit = ts
			}
		}
		return events, audit, doc
	}
	events, audit, doc := held()
	if len(doc.Snapshots) != 1 || doc.Snapshots[0].ID != id || events.SnapshotsHeld != 1 || events.SnapshotPinnedBytes != 0 || audit.SnapshotsHeld != 0 {
		t.Fatalf("/status before the compaction: snapshots %+v, events %d held pinning %d, audit %d held",
			doc.Snapshots, events.SnapshotsHeld, events.SnapshotPinnedBytes, audit.SnapshotsHeld)
	}

	// The compaction replaces the file: the snapshot now pins the old one.
	d.mu.Lock()
	b := d.open["events"].backend
	d.mu.Unlock()
	if _, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(5)}}); err != nil {
		t.Fatal(err)
	}
	events, audit, doc = held()
	if events.SnapshotsHeld != 1 || events.SnapshotPinnedBytes != size || audit.SnapshotsHeld != 0 || audit.SnapshotPinnedBytes != 0 {
		t.Fatalf("/status after the compaction: events %d held pinning %d (want 1 pinning %d), audit %d held pinning %d",
			events.SnapshotsHeld, events.SnapshotPinnedBytes, size, audit.SnapshotsHeld, audit.SnapshotPinnedBytes)
	}
	for series, want := range map[string]float64{
		`papyra_compactor_snapshots_held{target="events"}`:        1,
		`papyra_compactor_snapshot_pinned_bytes{target="events"}`: float64(size),
		`papyra_compactor_snapshots_held{target="audit"}`:         0,
		`papyra_compactor_snapshot_pinned_bytes{target="audit"}`:  0,
	} {
		if got := metricValue(t, d.metrics, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	var out bytes.Buffer
	renderStatus(&out, doc, time.Now())
	if r := row(t, out.String(), "events"); !strings.Contains(r, "1 (pins "+statusSizeText(size)+")") {
		t.Errorf("watcher status: events row lacks its snapshot:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "backup snapshot: 1 held, pinning "+statusSizeText(size)+"; "+id+" expires at ") {
		t.Errorf("watcher status lacks the snapshot line:\n%s", out.String())
	}

	if _, err := d.Release(id); err != nil {
		t.Fatal(err)
	}
	events, _, doc = held()
	if len(doc.Snapshots) != 0 || events.SnapshotsHeld != 0 || events.SnapshotPinnedBytes != 0 {
		t.Fatalf("/status after the release: snapshots %+v, events %d held pinning %d", doc.Snapshots, events.SnapshotsHeld, events.SnapshotPinnedBytes)
	}
	if got := metricValue(t, d.metrics, `papyra_compactor_snapshots_held{target="events"}`); got != 0 {
		t.Errorf("snapshots_held after the release = %v", got)
	}
}

// TestRenderStatusSnapshots: `watcher status` shows each target's held
// snapshots and the bytes they pin, and a line with how many the node
// holds, the bytes pinned and which expires next.
func TestRenderStatusSnapshots(t *testing.T) {
	exp1, exp2 := statusNow.Add(42*time.Minute), statusNow.Add(2*time.Hour)
	doc := StatusDoc{Node: "n", Ready: true, StartedAt: statusNow.Add(-time.Hour),
		Targets: []TargetStatus{
			{Name: "events", Backend: "json", SizeBytes: 10, State: "idle", SnapshotsHeld: 2, SnapshotPinnedBytes: 2048},
			{Name: "audit", Backend: "rotating", SizeBytes: 10, State: "idle", SnapshotsHeld: 1},
			{Name: "cache", Backend: "redis", SizeBytes: 10, State: "idle"},
		},
		Snapshots: []snapshot.Snapshot{
			{Target: "audit", ID: "snap-a", ExpiresAt: &exp1},
			{Target: "events", ID: "snap-a", ExpiresAt: &exp1},
			{Target: "events", ID: "snap-b", ExpiresAt: &exp2},
		}}
	var buf bytes.Buffer
	renderStatus(&buf, doc, statusNow)
	out := buf.String()
	header := row(t, out, "TARGET")
	col := strings.Index(header, "SNAPSHOTS")
	if col < 0 {
		t.Fatalf("no SNAPSHOTS column:\n%s", out)
	}
	for name, want := range map[string]string{"events": "2 (pins 2.0 KiB)", "audit": "1 (pins 0 B)", "cache": "-"} {
		if r := row(t, out, name); !strings.HasPrefix(r[col:], want) {
			t.Errorf("%s row: SNAPSHOTS %q, want %q:\n%s", name, r[col:], want, out)
		}
	}
	if !strings.Contains(out, "\nbackup snapshots: 2 held, pinning 2.0 KiB; snap-a expires at 12:42:00\n") {
		t.Errorf("no line summing up the snapshots:\n%s", out)
	}

	// None held: no line.
	doc.Snapshots = nil
	buf.Reset()
	renderStatus(&buf, doc, statusNow)
	if strings.Contains(buf.String(), "backup snapshot") {
		t.Errorf("a snapshot line without snapshots:\n%s", buf.String())
	}
}

// TestRenderFleetStatusReclaimable: the fleet table shows what each
// target's last retention estimate says is reclaimable: "-" without an
// estimate, "?" when it failed.
func TestRenderFleetStatusReclaimable(t *testing.T) {
	at := statusNow.Add(-time.Minute)
	docs := []StatusDoc{
		{Node: "node-a", Ready: true, Targets: []TargetStatus{
			{Name: "events", Backend: "json", SizeBytes: 5 << 20, State: "idle",
				Retention: &RetentionStatus{EstimatedAt: &at, ReclaimableBytes: 3 << 20}},
			{Name: "audit", Backend: "rotating", SizeBytes: 1 << 20, State: "idle",
				Retention: &RetentionStatus{Error: "permission denied"}},
			{Name: "fresh", Backend: "json", SizeBytes: 0, State: "idle", Retention: &RetentionStatus{}},
		}},
		{Node: "node-b", Ready: true, Targets: []TargetStatus{
			{Name: "cache", Backend: "redis", SizeBytes: -1, State: "idle"},
		}},
	}
	var buf bytes.Buffer
	renderFleetStatus(&buf, docs, statusNow)
	out := buf.String()
	header := row(t, out, "NODE")
	col := strings.Index(header, "RECLAIMABLE")
	if col < 0 {
		t.Fatalf("no RECLAIMABLE column:\n%s", out)
	}
	lines := strings.Split(out, "\n")
	for target, want := range map[string]string{"events": "3.0 MiB ", "audit": "? ", "fresh": "- ", "cache": "- "} {
		found := false
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 1 && f[1] == target {
				found = true
				if !strings.HasPrefix(l[col:], want) {
					t.Errorf("%s: RECLAIMABLE %q, want %q:\n%s", target, l[col:], want, out)
				}
			}
		}
		if !found {
			t.Errorf("no row for %s:\n%s", target, out)
		}
	}
}
