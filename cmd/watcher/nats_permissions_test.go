package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testlog"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

// documentedPermissions is the nats-server authorization block of
// docs/nats.md ("Minimal NATS permissions").
func documentedPermissions(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/nats.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "### Minimal NATS permissions")
	if !ok {
		t.Fatal("docs/nats.md has no section Minimal NATS permissions")
	}
	_, block, ok := strings.Cut(section, "```\n")
	if ok {
		block, _, ok = strings.Cut(block, "```")
	}
	if !ok || !strings.Contains(block, "authorization") {
		t.Fatalf("no authorization block in the section Minimal NATS permissions of docs/nats.md:\n%s", section)
	}
	return block
}

// fakeSnapshots takes and releases snapshots without files.
type fakeSnapshots struct{ taken chan string }

func (f *fakeSnapshots) Take(_ context.Context, id string, t triggers.Target, _ time.Duration) (snapshot.Snapshot, error) {
	f.taken <- id
	exp := time.Now().Add(time.Hour).UTC()
	return snapshot.Snapshot{Target: t.Name, ID: id, Dir: "/data/.events.ndjson.watcher-snap-" + id, ExpiresAt: &exp,
		Files: []snapshot.File{{Path: "/data/.events.ndjson.watcher-snap-" + id + "/events.ndjson", Bytes: 10}}}, nil
}

func (f *fakeSnapshots) Release(id string) ([]string, error) {
	select {
	case got := <-f.taken:
		if got == id {
			return []string{"events"}, nil
		}
	default:
	}
	return nil, snapshot.ErrNotFound
}

// TestNATSDocumentedPermissions: a daemon and a pipeline restricted to
// exactly the permissions docs/nats.md lists work: discovery, pre-backup
// with a snapshot, post-backup, a node-scoped compact, the fleet status,
// and the events; the server reports no permission violation.
func TestNATSDocumentedPermissions(t *testing.T) {
	srv := testutil.StartNATS(t, testutil.WithNATSConfig(documentedPermissions(t)))
	var logs testlog.Buffer
	n, err := triggers.NewNATS(triggers.NATSConfig{URL: srv.URL, Node: "node-1", User: "watcher-node-1", Password: "change-me-node-1"},
		[]triggers.Target{{Name: "events", Backend: backends.KindJSON}},
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	n.SetSnapshotter(&fakeSnapshots{taken: make(chan string, 1)})
	n.SetStatus(func(context.Context) any {
		return StatusDoc{Node: "node-1", Ready: true, Targets: []TargetStatus{{Name: "events", Backend: "json", SizeBytes: 10}}}
	})
	emit := func(sig policy.Signal) {
		go func() {
			for _, name := range sig.Targets {
				r := backends.Report{Target: name, Backend: backends.KindJSON, Trigger: sig.Kind, StartedAt: time.Now()}
				r.Finish()
				sig.Reply(r)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx, emit) }()
	defer func() { cancel(); <-done }()
	select {
	case <-n.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon's NATS trigger is not ready")
	}
	n.Publish(backends.Report{Target: "events", Backend: backends.KindJSON})

	// The discovery `watcher request` and `watcher status --nats` make.
	nc, err := triggers.ConnectNATS(triggers.NATSConfig{URL: srv.URL, Node: "pipeline", User: "pipeline", Password: "change-me-pipeline"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := triggers.DiscoverFleet(ctx, nc, triggers.DefaultSubjectPrefix, 5*time.Second)
	nc.Close()
	if err != nil || len(nodes) != 1 || nodes[0].Node != "node-1" {
		t.Fatalf("discovery: %+v, %v; want node-1", nodes, err)
	}

	auth := []string{"--nats", srv.URL, "--user", "pipeline", "--password", "change-me-pipeline"}
	code, stdout, stderr := runReq(t, append([]string{"pre-backup", "--snapshot", "--json", "--timeout", "20s"}, auth...)...)
	if code != exitOK {
		t.Fatalf("pre-backup --snapshot: exit %d, stderr %q\n%s", code, stderr, stdout)
	}
	var replies []triggers.NATSReply
	if err := json.Unmarshal([]byte(stdout), &replies); err != nil || len(replies) != 1 || len(replies[0].Snapshots) != 1 {
		t.Fatalf("pre-backup --snapshot: %v\n%s", err, stdout)
	}
	id := replies[0].Snapshots[0].ID
	code, stdout, stderr = runReq(t, append([]string{"post-backup", "--snapshot-id", id}, auth...)...)
	if code != exitOK || !strings.Contains(stdout, "released snapshot "+id) {
		t.Fatalf("post-backup: exit %d, stderr %q\n%s", code, stderr, stdout)
	}
	code, stdout, stderr = runReq(t, append([]string{"compact", "--node", "node-1"}, auth...)...)
	if code != exitOK {
		t.Fatalf("compact --node: exit %d, stderr %q\n%s", code, stderr, stdout)
	}
	var out, errb bytes.Buffer
	if code := runStatus(context.Background(), append([]string{"--timeout", "20s"}, auth...), &out, &errb); code != exitOK || !strings.Contains(out.String(), "node-1") {
		t.Fatalf("status --nats: exit %d, stderr %q\n%s", code, errb.String(), out.String())
	}
	if l := logs.String(); strings.Contains(strings.ToLower(l), "permission") {
		t.Fatalf("the daemon met a permission violation:\n%s", l)
	}
}
