package triggers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/snapshot"
)

// fakeSnapper records what it is asked to take and release.
type fakeSnapper struct {
	mu       sync.Mutex
	takes    []string // "id target ttl"
	held     map[string][]string
	fail     map[string]error // by target
	relErr   error
	released []string
}

func newFakeSnapper() *fakeSnapper {
	return &fakeSnapper{held: map[string][]string{}, fail: map[string]error{}}
}

func (s *fakeSnapper) Take(_ context.Context, id string, t Target, ttl time.Duration) (snapshot.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.takes = append(s.takes, fmt.Sprintf("%s %s %s", id, t.Name, ttl))
	if err := s.fail[t.Name]; err != nil {
		return snapshot.Snapshot{Target: t.Name}, err
	}
	s.held[id] = append(s.held[id], t.Name)
	exp := time.Now().Add(ttl).UTC()
	return snapshot.Snapshot{Target: t.Name, ID: id, Dir: "/data/." + t.Name + ".watcher-snap-" + id, ExpiresAt: &exp,
		Files: []snapshot.File{{Path: "/data/." + t.Name + ".watcher-snap-" + id + "/" + t.Name, Bytes: 42}}}, nil
}

func (s *fakeSnapper) Release(id string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.relErr != nil {
		return nil, s.relErr
	}
	ts, ok := s.held[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", snapshot.ErrNotFound, id)
	}
	delete(s.held, id)
	s.released = append(s.released, id)
	return ts, nil
}

func rotatingTarget(name string) Target {
	return Target{Name: name, Backend: backends.KindRotating, Files: []string{"/data/" + name + ".log"}}
}

// TestNATSPreBackupSnapshots: pre-backup with "snapshot": true snapshots
// every file target under one id with the requested TTL, replies that
// redis targets are skipped (still ok), and reports a target whose
// compaction failed or whose snapshot failed as an error (not ok).
func TestNATSPreBackupSnapshots(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	n := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("events"), rotatingTarget("audit"), redisTarget("streams")}, f)
	sn := newFakeSnapper()
	n.SetSnapshotter(sn)
	nc := clientConn(t, srv.URL)

	r := one(t, request(t, nc, prefix+".node.node-1.pre-backup", `{"snapshot":true,"snapshot_ttl":"2h"}`, 1))
	f.next(t)
	if !r.OK || r.Error != "" {
		t.Fatalf("reply not ok: %+v", r)
	}
	byTarget := map[string]snapshot.Snapshot{}
	for _, s := range r.Snapshots {
		byTarget[s.Target] = s
	}
	ev, au, st := byTarget["events"], byTarget["audit"], byTarget["streams"]
	if ev.ID == "" || ev.ID != au.ID || !snapshot.ValidID(ev.ID) || len(ev.Files) != 1 || ev.Files[0].Bytes != 42 || ev.ExpiresAt == nil {
		t.Fatalf("file target snapshots: %+v %+v", ev, au)
	}
	if st.Skipped == "" || st.ID != "" || !strings.Contains(st.Skipped, "redis") {
		t.Fatalf("redis target snapshot: %+v, want skipped", st)
	}
	sn.mu.Lock()
	takes := slices.Clone(sn.takes)
	sn.mu.Unlock()
	slices.Sort(takes)
	if want := []string{ev.ID + " audit 2h0m0s", ev.ID + " events 2h0m0s"}; !slices.Equal(takes, want) {
		t.Fatalf("takes %q, want %q", takes, want)
	}

	// Without snapshot_ttl the watcher's default (0 to the Snapshotter).
	r = one(t, request(t, nc, prefix+".node.node-1.pre-backup", `{"targets":["events"],"snapshot":true}`, 1))
	f.next(t)
	if !r.OK || len(r.Snapshots) != 1 || !strings.HasSuffix(sn.takes[len(sn.takes)-1], " events 0s") {
		t.Fatalf("default ttl: %+v, takes %q", r, sn.takes)
	}

	// A failed compaction: no snapshot of that target; a failed snapshot:
	// its error. Neither reply is ok.
	f.mu.Lock()
	f.report = func(sig policy.Signal, target string) backends.Report {
		rep := okReport(sig, target)
		if target == "events" {
			rep.Error = "disk on fire"
		}
		return rep
	}
	f.mu.Unlock()
	sn.mu.Lock()
	sn.fail["audit"] = errors.New("the writer kept rotating")
	sn.mu.Unlock()
	r = one(t, request(t, nc, prefix+".node.node-1.pre-backup", `{"targets":["events","audit"],"snapshot":true}`, 1))
	f.next(t)
	if r.OK {
		t.Fatalf("reply ok despite failures: %+v", r)
	}
	byTarget = map[string]snapshot.Snapshot{}
	for _, s := range r.Snapshots {
		byTarget[s.Target] = s
	}
	if e := byTarget["events"]; e.ID != "" || !strings.Contains(e.Error, "compaction failed") {
		t.Errorf("events after a failed compaction: %+v", e)
	}
	if a := byTarget["audit"]; a.ID != "" || !strings.Contains(a.Error, "kept rotating") {
		t.Errorf("audit after a failed snapshot: %+v", a)
	}

	// snapshot with another verb, a bad TTL, snapshot_id on pre-backup:
	// refused, nothing compacted.
	for _, c := range []struct{ verb, body, want string }{
		{"compact", `{"snapshot":true}`, "snapshot"},
		{"pre-migration", `{"snapshot_ttl":"1h"}`, "snapshot"},
		{"pre-backup", `{"snapshot":true,"snapshot_ttl":"forever"}`, "snapshot_ttl"},
		{"pre-backup", `{"snapshot":true,"snapshot_ttl":"1000h"}`, "snapshot_ttl"},
		{"pre-backup", `{"snapshot_id":"snap-x"}`, "snapshot_id"},
	} {
		r := one(t, request(t, nc, prefix+".node.node-1."+c.verb, c.body, 1))
		if r.OK || !strings.Contains(r.Error, c.want) {
			t.Errorf("%s %s: reply %+v, want an error about %s", c.verb, c.body, r, c.want)
		}
	}
	f.none(t)
}

// TestNATSPreBackupSnapshotNoSnapshotter: a node without a Snapshotter
// compacts and says snapshots are not available (not ok).
func TestNATSPreBackupSnapshotNoSnapshotter(t *testing.T) {
	srv := testutil.StartNATS(t)
	f := newFakePolicy()
	prefix := uniquePrefix(t)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix}, []Target{fileTarget("events")}, f)
	nc := clientConn(t, srv.URL)
	r := one(t, request(t, nc, prefix+".pre-backup", `{"snapshot":true}`, 1))
	f.next(t)
	if r.OK || len(r.Snapshots) != 1 || !strings.Contains(r.Snapshots[0].Error, "not available") {
		t.Fatalf("reply %+v", r)
	}
}

// TestNATSPostBackup: every node answers post-backup once (no queue
// group); the one holding the snapshot releases it, the others reply ok
// with nothing released; bad bodies and a failed release are errors.
func TestNATSPostBackup(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := uniquePrefix(t)
	shared := redisTarget("streams")
	a := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-a"}, []Target{fileTarget("events"), shared}, newFakePolicy())
	b := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-b"}, []Target{fileTarget("events"), shared}, newFakePolicy())
	sa, sb := newFakeSnapper(), newFakeSnapper()
	a.SetSnapshotter(sa)
	b.SetSnapshotter(sb)
	sa.held["snap-1"] = []string{"events"}
	nc := clientConn(t, srv.URL)

	rs := request(t, nc, prefix+".post-backup", `{"snapshot_id":"snap-1"}`, 2)
	slices.SortFunc(rs, func(x, y NATSReply) int { return strings.Compare(x.Node, y.Node) })
	if len(rs) != 2 || rs[0].Node != "node-a" || rs[1].Node != "node-b" {
		t.Fatalf("replies %+v, want one from each node", rs)
	}
	if !rs[0].OK || !slices.Equal(rs[0].Released, []string{"snap-1"}) || rs[0].Request != "post-backup" {
		t.Errorf("node-a: %+v, want snap-1 released", rs[0])
	}
	if !rs[1].OK || len(rs[1].Released) != 0 {
		t.Errorf("node-b: %+v, want ok with nothing released", rs[1])
	}
	if !slices.Equal(sa.released, []string{"snap-1"}) || len(sb.released) != 0 {
		t.Errorf("released: a %v, b %v", sa.released, sb.released)
	}
	// Again: nobody holds it; both reply ok, nothing released.
	for _, r := range request(t, nc, prefix+".post-backup", `{"snapshot_id":"snap-1"}`, 2) {
		if !r.OK || len(r.Released) != 0 {
			t.Errorf("second post-backup: %+v", r)
		}
	}
	// Node-scoped: only that node answers.
	sb.held["snap-2"] = []string{"events"}
	r := one(t, request(t, nc, prefix+".node.node-b.post-backup", `{"snapshot_id":"snap-2"}`, 1))
	if r.Node != "node-b" || !slices.Equal(r.Released, []string{"snap-2"}) {
		t.Errorf("node-scoped post-backup: %+v", r)
	}
	for _, body := range []string{``, `{}`, `{"snapshot_id":"../etc"}`, `{"snapshot_id":"snap-3","targets":["events"]}`,
		`{"snapshot_id":"snap-3","snapshot":true}`, `{"snapshot_id":"snap-3","dry_run":true}`, `not json`} {
		r := one(t, request(t, nc, prefix+".node.node-a.post-backup", body, 1))
		if r.OK || r.Error == "" {
			t.Errorf("post-backup %q: %+v, want refused", body, r)
		}
	}
	sa.relErr = errors.New("permission denied")
	r = one(t, request(t, nc, prefix+".node.node-a.post-backup", `{"snapshot_id":"snap-4"}`, 1))
	if r.OK || !strings.Contains(r.Error, "permission denied") {
		t.Errorf("failed release: %+v", r)
	}
}

// TestNATSStatusEndpoint: every node answers status with its status
// document; a node without one says so.
func TestNATSStatusEndpoint(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := uniquePrefix(t)
	shared := redisTarget("streams")
	a := startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-a"}, []Target{fileTarget("events"), shared}, newFakePolicy())
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "node-b"}, []Target{shared}, newFakePolicy())
	a.SetStatus(func(ctx context.Context) any {
		if _, ok := ctx.Deadline(); !ok {
			return map[string]any{"error": "no deadline"}
		}
		return map[string]any{"node": "node-a", "targets": []map[string]any{{"name": "events", "size_bytes": 123}}}
	})
	nc := clientConn(t, srv.URL)
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(prefix+".status", inbox, nil); err != nil {
		t.Fatal(err)
	}
	docs := map[string]map[string]any{}
	for range 2 {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("status replies so far %v: %v", docs, err)
		}
		var d map[string]any
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatalf("status reply %q: %v", m.Data, err)
		}
		docs[fmt.Sprint(d["node"])] = d
	}
	if m, err := sub.NextMsg(700 * time.Millisecond); err == nil {
		t.Fatalf("a third status reply: %s", m.Data)
	}
	if d := docs["node-a"]; d == nil || d["targets"] == nil || d["error"] != nil {
		t.Errorf("node-a status: %v", docs)
	}
	if d := docs["node-b"]; d == nil || !strings.Contains(fmt.Sprint(d["error"]), "not available") {
		t.Errorf("node-b status: %v", docs)
	}
	// Node-scoped status.
	m, err := nc.Request(prefix+".node.node-a.status", nil, 10*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"size_bytes":123`) {
		t.Fatalf("node-scoped status: %v %v", m, err)
	}
}

// TestExpectedReplies: the number of replies the fleet sends, as
// `watcher request` without --expect waits for, matches what two nodes
// with one shared redis group and a third with other redis targets send.
func TestExpectedReplies(t *testing.T) {
	nodes := []FleetNode{
		{Node: "a", Local: []string{"events", "audit"}, Shared: []string{"streams"}, SharedGroup: "g1"},
		{Node: "b", Local: []string{"events"}, Shared: []string{"streams"}, SharedGroup: "g1"},
		{Node: "c", Shared: []string{"queues"}, SharedGroup: "g2"},
	}
	for _, c := range []struct {
		verb    string
		targets []string
		want    int
	}{
		{"compact", nil, 4},                           // a, b, g1, g2
		{"pre-backup", []string{"events"}, 3},         // a, b; c refuses the unknown name
		{"pre-backup", []string{"audit"}, 3},          // a; b and c refuse
		{"compact", []string{"streams"}, 2},           // g1 once; c refuses
		{"compact", []string{"queues"}, 3},            // g2; a and b refuse
		{"compact", []string{"streams", "queues"}, 3}, // every node refuses one of them
		{"post-backup", nil, 3},
		{"status", nil, 3},
	} {
		if got := ExpectedReplies(nodes, c.verb, c.targets); got != c.want {
			t.Errorf("ExpectedReplies(%s %v) = %d, want %d", c.verb, c.targets, got, c.want)
		}
	}
	if got := ExpectedReplies(nil, "compact", nil); got != 0 {
		t.Errorf("no nodes: %d", got)
	}
}

// TestExpectedRepliesLive: DiscoverFleet finds the nodes and
// ExpectedReplies counts exactly the replies they send, for each kind of
// request.
func TestExpectedRepliesLive(t *testing.T) {
	srv := testutil.StartNATS(t)
	prefix := uniquePrefix(t)
	f := newFakePolicy()
	f.mu.Lock()
	f.report = func(sig policy.Signal, target string) backends.Report {
		rep := okReport(sig, target)
		if target == "streams" || target == "queues" {
			rep.Backend = backends.KindRedis
		}
		return rep
	}
	f.mu.Unlock()
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "a"}, []Target{fileTarget("events"), fileTarget("audit"), redisTarget("streams")}, f)
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "b"}, []Target{fileTarget("events"), redisTarget("streams")}, f)
	qt := redisTarget("queues")
	qt.RedisURL = "redis://127.0.0.1:6380/0"
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix, Node: "c"}, []Target{qt}, f)
	// Another fleet on other subjects is not counted.
	startNode(t, srv.URL, NATSConfig{SubjectPrefix: prefix + "x", Node: "z"}, []Target{fileTarget("events")}, f)
	nc := clientConn(t, srv.URL)
	nodes, err := DiscoverFleet(context.Background(), nc, prefix, 5*time.Second)
	if err != nil || len(nodes) != 3 || nodes[0].Node != "a" || nodes[2].Node != "c" {
		t.Fatalf("DiscoverFleet: %+v, %v", nodes, err)
	}
	if nodes[0].SharedGroup == "" || nodes[0].SharedGroup != nodes[1].SharedGroup || nodes[2].SharedGroup == nodes[0].SharedGroup {
		t.Fatalf("shared groups: %+v", nodes)
	}
	for _, c := range []struct {
		verb    string
		targets []string
	}{
		{"compact", nil}, {"pre-backup", []string{"events"}}, {"compact", []string{"streams"}},
		{"compact", []string{"audit", "queues"}}, {"post-backup", nil},
	} {
		want := ExpectedReplies(nodes, c.verb, c.targets)
		body, _ := json.Marshal(NATSRequest{Targets: c.targets, SnapshotID: map[bool]string{true: "snap-1"}[c.verb == "post-backup"]})
		// Wait for more than expected: the count must be exact.
		got, _ := SendRequest(context.Background(), nc, NATSSubject(prefix, "", c.verb), body, want+1, 1500*time.Millisecond)
		if len(got) != want {
			t.Errorf("%s %v: %d replies, ExpectedReplies says %d", c.verb, c.targets, len(got), want)
		}
		for range 20 {
			select {
			case <-f.signals:
			default:
			}
		}
	}
}
