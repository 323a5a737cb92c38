package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

// TestRequestSnapshotFlagsRefused: the snapshot flags go with their own
// request only.
func TestRequestSnapshotFlagsRefused(t *testing.T) {
	for _, args := range [][]string{
		{"compact", "--snapshot"},
		{"pre-migration", "--snapshot-ttl", "1h"},
		{"pre-backup", "--snapshot", "--snapshot-ttl", "200h"},
		{"pre-backup", "--snapshot", "--snapshot-ttl", "-1s"},
		{"pre-backup", "--snapshot-id", "snap-1"},
		{"compact", "--snapshot-id", "snap-1"},
		{"post-backup"},
		{"post-backup", "--snapshot-id", "../etc"},
		{"post-backup", "--snapshot-id", "snap-1", "--snapshot"},
		{"post-backup", "--snapshot-id", "snap-1", "--target", "events"},
		{"post-backup", "--snapshot-id", "snap-1", "--dry-run"},
	} {
		code, stdout, stderr := runReq(t, append(args, "--nats", "nats://127.0.0.1:1")...)
		if code != exitBadConfig || stderr == "" || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 with a message", args, code, stdout, stderr)
		}
	}
	var out, errb strings.Builder
	if code := runStatus(context.Background(), []string{"--nats", "nats://127.0.0.1:1", "extra"}, &out, &errb); code != exitBadConfig {
		t.Errorf("status --nats with an argument: exit %d", code)
	}
	if code := runStatus(context.Background(), []string{"--nats", "nats://127.0.0.1:1", "--timeout", "0s"}, &out, &errb); code != exitBadConfig {
		t.Errorf("status --nats --timeout 0s: exit %d", code)
	}
}

// TestRequestSnapshotAndRelease: pre-backup --snapshot --snapshot-ttl sends
// the snapshot fields and prints each file with its byte count and the id;
// post-backup --snapshot-id sends the id, exit 0 when a node released it
// and 1 when none held it.
func TestRequestSnapshotAndRelease(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := requestPrefix()
	got := make(chan triggers.NATSRequest, 8)
	exp := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	responder(t, srv.URL, prefix+".node.n1.pre-backup", func(req triggers.NATSRequest) []triggers.NATSReply {
		got <- req
		return []triggers.NATSReply{{Node: "n1", Request: "pre-backup", OK: true,
			Reports: []backends.Report{sampleReport("audit"), sampleReport("streams")},
			Snapshots: []snapshot.Snapshot{
				{Target: "audit", ID: "snap-abc", Dir: "/data/.audit.log.watcher-snap-snap-abc", ExpiresAt: &exp, Files: []snapshot.File{
					{Path: "/data/.audit.log.watcher-snap-snap-abc/audit.log.2", Bytes: 1000},
					{Path: "/data/.audit.log.watcher-snap-snap-abc/audit.log.1", Bytes: 2000},
				}},
				{Target: "streams", Skipped: "snapshots are not supported for redis targets"},
			}}}
	})
	responder(t, srv.URL, prefix+".node.n1.post-backup", func(req triggers.NATSRequest) []triggers.NATSReply {
		got <- req
		r := triggers.NATSReply{Node: "n1", Request: "post-backup", OK: true, Released: []string{}}
		if req.SnapshotID == "snap-abc" {
			r.Released = []string{"snap-abc"}
		}
		return []triggers.NATSReply{r}
	})

	code, stdout, stderr := runReq(t, "pre-backup", "--snapshot", "--snapshot-ttl", "2h", "--nats", srv.URL, "--prefix", prefix, "--node", "n1")
	if code != exitOK {
		t.Fatalf("pre-backup --snapshot: exit %d, stderr %q\n%s", code, stderr, stdout)
	}
	req := <-got
	if !req.Snapshot || req.SnapshotTTL != "2h0m0s" || req.SnapshotID != "" {
		t.Fatalf("request %+v", req)
	}
	i1 := strings.Index(stdout, "audit.log.2")
	i2 := strings.Index(stdout, "audit.log.1")
	if i1 < 0 || i2 < i1 || !strings.Contains(stdout, "snap-abc") || !strings.Contains(stdout, "1000") ||
		!strings.Contains(stdout, "2000") || !strings.Contains(stdout, "skipped") || !strings.Contains(stdout, "2026-12-01T03:00:00Z") {
		t.Fatalf("pre-backup --snapshot output lacks the files in order, their bytes, the id, the expiry or the skip:\n%s", stdout)
	}
	// --json carries the snapshots as the backup script reads them.
	code, stdout, _ = runReq(t, "pre-backup", "--snapshot", "--nats", srv.URL, "--prefix", prefix, "--node", "n1", "--json")
	if req := <-got; code != exitOK || !req.Snapshot || req.SnapshotTTL != "" {
		t.Fatalf("--json: exit %d, request %+v", code, req)
	}
	var replies []triggers.NATSReply
	if err := json.Unmarshal([]byte(stdout), &replies); err != nil || len(replies) != 1 || len(replies[0].Snapshots) != 2 ||
		replies[0].Snapshots[0].Files[1].Bytes != 2000 {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}

	code, stdout, stderr = runReq(t, "post-backup", "--snapshot-id", "snap-abc", "--nats", srv.URL, "--prefix", prefix, "--node", "n1")
	if req := <-got; code != exitOK || req.SnapshotID != "snap-abc" || req.Snapshot || !strings.Contains(stdout, "released snapshot snap-abc") {
		t.Fatalf("post-backup: exit %d, request %+v, stdout %q, stderr %q", code, req, stdout, stderr)
	}
	code, _, stderr = runReq(t, "post-backup", "--snapshot-id", "snap-gone", "--nats", srv.URL, "--prefix", prefix, "--node", "n1")
	if <-got; code != exitFailure || !strings.Contains(stderr, "snap-gone") {
		t.Fatalf("post-backup of an unknown id: exit %d, stderr %q", code, stderr)
	}
}

// TestStatusNATS: status --nats asks every watcher of the prefix and
// prints one table of node and target (or --json the documents); exit 1
// when none answers.
func TestStatusNATS(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := requestPrefix()
	for _, node := range []string{"node-a", "node-b"} {
		n, err := triggers.NewNATS(triggers.NATSConfig{URL: srv.URL, SubjectPrefix: prefix, Node: node},
			[]triggers.Target{{Name: "events-" + node, Backend: "json"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		n.SetStatus(func(context.Context) any {
			return StatusDoc{Node: node, Ready: true, Targets: []TargetStatus{{Name: "events-" + node, Backend: "json", SizeBytes: 4096, SnapshotsHeld: 1}}}
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(ctx, func(policy.Signal) {}) }()
		t.Cleanup(func() { cancel(); <-done })
		select {
		case <-n.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("node not ready")
		}
	}
	var out, errb strings.Builder
	began := time.Now()
	code := runStatus(context.Background(), []string{"--nats", srv.URL, "--prefix", prefix, "--timeout", "20s"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("status --nats: exit %d, stderr %q", code, errb.String())
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("status --nats took %s: it should return once both nodes answered", took)
	}
	for _, want := range []string{"node-a", "node-b", "events-node-a", "events-node-b", "SNAPSHOTS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status --nats lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	code = runStatus(context.Background(), []string{"--nats", srv.URL, "--prefix", prefix, "--json"}, &out, &errb)
	var docs []StatusDoc
	if err := json.Unmarshal([]byte(out.String()), &docs); code != exitOK || err != nil || len(docs) != 2 || docs[0].Node != "node-a" {
		t.Fatalf("status --nats --json: exit %d, %v\n%s", code, err, out.String())
	}
	errb.Reset()
	code = runStatus(context.Background(), []string{"--nats", srv.URL, "--prefix", prefix + ".nobody", "--timeout", "2s"}, &out, &errb)
	if code != exitFailure || errb.String() == "" {
		t.Fatalf("status --nats with no watcher: exit %d, stderr %q", code, errb.String())
	}
}
