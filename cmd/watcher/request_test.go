package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

func requestPrefix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "papyra.reqtest." + hex.EncodeToString(b)
}

func runReq(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runRequest(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// responder answers every request on subject with replies made by fn from
// the request body.
func responder(t *testing.T, url, subject string, fn func(req triggers.NATSRequest) []triggers.NATSReply) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	_, err = nc.Subscribe(subject, func(m *nats.Msg) {
		var req triggers.NATSRequest
		if len(m.Data) > 0 {
			if err := json.Unmarshal(m.Data, &req); err != nil {
				t.Errorf("request body %q: %v", m.Data, err)
			}
		}
		for _, r := range fn(req) {
			data, _ := json.Marshal(r)
			_ = m.Respond(data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func sampleReport(target string) backends.Report {
	r := backends.Report{Target: target, Backend: "json", Trigger: "nats", BeforeRecords: 10, AfterRecords: 4,
		BeforeBytes: backends.Int64(10240), AfterBytes: backends.Int64(4096), DurationMS: 1500}
	r.Finish()
	return r
}

func TestRequestUsageErrors(t *testing.T) {
	cases := [][]string{
		{},
		{"backup"},
		{"compact", "extra"},
		{"compact", "--timeout", "0s"},
		{"compact", "--expect", "-1"},
		{"compact", "--target", "../etc/passwd"},
		{"compact", "--no-such-flag"},
		{"compact", "--token", "t", "--creds", "/nonexistent.creds"},
	}
	for _, args := range cases {
		code, _, stderr := runReq(t, args...)
		if code != exitBadConfig || stderr == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, stderr)
		}
	}
}

func TestRequestNoServerNoReply(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := requestPrefix()

	code, _, stderr := runReq(t, "compact", "--nats", srv.URL, "--prefix", prefix)
	if code != exitFailure || !strings.Contains(stderr, "no watcher listens on "+prefix+".compact") {
		t.Fatalf("nobody listening: exit %d, %q", code, stderr)
	}

	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Subscribe(prefix+".pre-backup", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	code, stdout, stderr := runReq(t, "pre-backup", "--nats", srv.URL, "--prefix", prefix, "--timeout", "300ms")
	if code != exitFailure || !strings.Contains(stderr, "no reply within 300ms from "+prefix+".pre-backup") || stdout != "" {
		t.Fatalf("silent listener: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	url := srv.URL
	srv.Shutdown()
	code, _, stderr = runReq(t, "compact", "--nats", url, "--timeout", "2s")
	if code != exitFailure || !strings.Contains(stderr, "connect to NATS at "+url) {
		t.Fatalf("server down: exit %d, %q", code, stderr)
	}
}

func TestRequestPrintsReplies(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := requestPrefix()
	got := make(chan triggers.NATSRequest, 4)
	responder(t, srv.URL, prefix+".pre-backup", func(req triggers.NATSRequest) []triggers.NATSReply {
		got <- req
		var reports []backends.Report
		for _, name := range req.Targets {
			reports = append(reports, sampleReport(name))
		}
		return []triggers.NATSReply{
			{Node: "node-1", Request: "pre-backup", OK: true, Reports: reports},
			{Node: "node-2", Request: "pre-backup", OK: true, Reports: reports},
		}
	})

	code, stdout, stderr := runReq(t, "pre-backup", "--nats", srv.URL, "--prefix", prefix,
		"--target", "events", "--target", "audits", "--reason", "nightly", "--dry-run", "--expect", "2")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	req := <-got
	if strings.Join(req.Targets, ",") != "events,audits" || req.Reason != "nightly" || !req.DryRun {
		t.Fatalf("request sent = %+v", req)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "NODE") {
		t.Fatalf("table:\n%s", stdout)
	}
	for _, want := range []string{"node-1", "events", "ok", "6", "6.0 KiB", "1.5s"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	if !strings.Contains(lines[4], "node-2") || !strings.Contains(lines[4], "audits") {
		t.Errorf("last row %q", lines[4])
	}

	// --json prints the replies.
	code, stdout, _ = runReq(t, "pre-backup", "--nats", srv.URL, "--prefix", prefix, "--target", "events", "--json", "--expect", "2")
	<-got
	var replies []triggers.NATSReply
	if err := json.Unmarshal([]byte(stdout), &replies); err != nil || code != exitOK || len(replies) != 2 || replies[1].Reports[0].RemovedRecords != 6 {
		t.Fatalf("--json: exit %d, %v, %s", code, err, stdout)
	}

	// Fewer replies than --expect: exit 1.
	code, stdout, stderr = runReq(t, "pre-backup", "--nats", srv.URL, "--prefix", prefix, "--expect", "3", "--timeout", "300ms")
	<-got
	if code != exitFailure || !strings.Contains(stderr, "2 of 3") || !strings.Contains(stdout, "node-2") {
		t.Fatalf("--expect 3: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// A named target no reply reports on: exit 1.
	responder(t, srv.URL, prefix+".compact", func(req triggers.NATSRequest) []triggers.NATSReply {
		return []triggers.NATSReply{{Node: "node-1", Request: "compact", OK: true, Reports: []backends.Report{sampleReport("events")}}}
	})
	code, _, stderr = runReq(t, "compact", "--nats", srv.URL, "--prefix", prefix, "--target", "events", "--target", "audits", "--expect", "1")
	if code != exitFailure || !strings.Contains(stderr, "no reply reported on audits") {
		t.Fatalf("unanswered target: exit %d, %q", code, stderr)
	}
}

func TestRequestNotOKReplies(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := requestPrefix()
	responder(t, srv.URL, prefix+".node.node-7.pre-migration", func(req triggers.NATSRequest) []triggers.NATSReply {
		rep := sampleReport("events")
		rep.Anomalies = []backends.Anomaly{{Target: "events", Type: "partial_line", Path: "/data/events.ndjson", Detail: "unterminated\nline 9"}}
		failed := sampleReport("audits")
		failed.Error = "disk full"
		failed.ReclaimedBytes = nil
		return []triggers.NATSReply{{Node: "node-7", Request: "pre-migration", OK: false,
			Reports: []backends.Report{rep, failed}, Anomalies: rep.Anomalies, Error: "1 of 2 targets failed; 1 anomalies remain"}}
	})
	code, stdout, stderr := runReq(t, "pre-migration", "--nats", srv.URL, "--prefix", prefix, "--node", "node-7", "--expect", "1")
	if code != exitFailure || !strings.Contains(stderr, "1 of 1 replies not ok") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"1 anomalies", "error", "disk full", "node-7: 1 of 2 targets failed; 1 anomalies remain",
		"ANOMALIES", "partial_line", "/data/events.ndjson", "unterminated line 9"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	// A refusal without reports is a row too.
	responder(t, srv.URL, prefix+".compact", func(req triggers.NATSRequest) []triggers.NATSReply {
		return []triggers.NATSReply{{Node: "node-7", Request: "compact", Error: `unknown target "nope"`, UnknownTargets: []string{"nope"}}}
	})
	code, stdout, _ = runReq(t, "compact", "--nats", srv.URL, "--prefix", prefix, "--target", "nope", "--expect", "1")
	if code != exitFailure || !strings.Contains(stdout, `unknown target "nope"`) {
		t.Fatalf("refusal: exit %d:\n%s", code, stdout)
	}
}

// TestRequestAgainstTrigger runs the command against the real NATS trigger,
// with a stand-in policy that answers every signal.
func TestRequestAgainstTrigger(t *testing.T) {
	srv := testutil.StartNATS(t, testutil.WithNATSToken("tok"))
	prefix := requestPrefix()
	n, err := triggers.NewNATS(triggers.NATSConfig{URL: srv.URL, SubjectPrefix: prefix, Node: "node-1", Token: "tok"},
		[]triggers.Target{{Name: "events", Backend: "json"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- n.Run(ctx, func(sig policy.Signal) {
			for _, name := range sig.Targets {
				r := sampleReport(name)
				r.DryRun = sig.DryRun
				sig.Reply(r)
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-n.Ready()
	code, stdout, stderr := runReq(t, "compact", "--nats", srv.URL, "--prefix", prefix, "--token", "tok", "--node", "node-1", "--expect", "1", "--dry-run")
	if code != exitOK || !strings.Contains(stdout, "dry run") || !strings.Contains(stdout, "events") {
		t.Fatalf("exit %d, stderr %q, output:\n%s", code, stderr, stdout)
	}
	code, _, stderr = runReq(t, "compact", "--nats", srv.URL, "--prefix", prefix, "--token", "wrong")
	if code != exitFailure || !strings.Contains(strings.ToLower(stderr), "authorization violation") {
		t.Fatalf("wrong token: exit %d, %q", code, stderr)
	}
}
