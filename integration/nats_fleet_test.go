package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/triggers"
)

// fleetReply is what `watcher request --json` prints per reply.
type fleetReply struct {
	Node      string `json:"node"`
	OK        bool   `json:"ok"`
	Error     string `json:"error"`
	Anomalies []struct {
		Target, Type, Path, Detail string
	} `json:"anomalies"`
	Reports []struct {
		Target       string `json:"target"`
		Backend      string `json:"backend"`
		Trigger      string `json:"trigger"`
		AfterRecords int64  `json:"after_records"`
		Skipped      string `json:"skipped"`
		Error        string `json:"error"`
	} `json:"reports"`
}

// TestNATSFleet: two daemons on the same subjects, each with its own file
// target and both with the same Redis target. A fleet-wide request gets one
// reply per node for the file targets and exactly one for the shared Redis
// target; pre-migration on one node reports the anomalies its scan finds and
// is not ok while any remains.
func TestNATSFleet(t *testing.T) {
	ns := testutil.StartNATS(t)
	redisURL := testutil.SharedRedis(t)
	prefix := testutil.UniquePrefix(t, redisURL)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opts)
	defer rc.Close()
	ctx := context.Background()
	stream := prefix + ":local:events"
	for i := range 500 {
		rec := fmt.Sprintf(`{"kind": "event", "system_id": "local", "actor_address": "local://w/0", "event_type": "Tick", "payload": {"seq": %d}, "timestamp": 1795599000.0}`, i)
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"data", rec}}).Err(); err != nil {
			t.Fatal(err)
		}
	}

	start := func(node string, extra string) (*daemonProc, string) {
		dir := t.TempDir()
		addr := freeAddr(t)
		writeFile(t, filepath.Join(dir, "data", "events.ndjson"), genRecords(0, 300, 1795599000, 90))
		cfg := writeConfig(t, dir, strings.Replace(daemonHeader(addr, "", ""), `node = "it-node"`, fmt.Sprintf("node = %q", node), 1)+
			fmt.Sprintf("\n[nats]\nurl = %q\n", ns.URL)+jsonTarget("events", "events.ndjson", 100)+
			fmt.Sprintf(`
[[target]]
name = "streams"
backend = "redis"
url = %q
prefix = %q
[target.retention]
max_records = 100
`, redisURL, prefix)+extra)
		d := startDaemon(t, cfg, addr)
		d.WaitReady(20 * time.Second)
		return d, dir
	}
	a, aDir := start("node-a", `
[[target]]
name = "audit"
backend = "rotating"
path = "data/audit.log"
max_bytes = 100000
max_files = 2
`)
	writeFile(t, filepath.Join(aDir, "data", "audit.log"), genRecords(0, 10, 1795599000, 50))
	writeFile(t, filepath.Join(aDir, "data", "audit.log.7"), genRecords(0, 3, 1795599000, 50)) // an orphan
	b, _ := start("node-b", "")

	// Without --expect the client gathers every reply until 0.5 s after the
	// last one: a second answer for the Redis target would be seen.
	r := runWatcher(t, 60*time.Second, "request", "compact", "--nats", ns.URL, "--timeout", "30s", "--json",
		"--target", "events", "--target", "streams")
	wantCode(t, r, 0, "fleet-wide compact")
	var replies []fleetReply
	if err := json.Unmarshal([]byte(r.Stdout), &replies); err != nil {
		t.Fatalf("replies: %v\n%s", err, r)
	}
	files, streams := map[string]int{}, 0
	for _, rep := range replies {
		if !rep.OK {
			t.Errorf("reply from %s not ok: %s", rep.Node, rep.Error)
		}
		for _, rp := range rep.Reports {
			switch rp.Target {
			case "events":
				files[rep.Node]++
			case "streams":
				streams++
				if rp.Skipped != "" || rp.Error != "" || rp.Trigger != "nats" {
					t.Errorf("streams report %+v", rp)
				}
			}
		}
	}
	if files["node-a"] != 1 || files["node-b"] != 1 || streams != 1 || len(replies) != 3 {
		t.Fatalf("want one events report per node and exactly one streams report in 3 replies, got files %v, streams %d:\n%s", files, streams, r.Stdout)
	}
	if n, err := rc.XLen(ctx, stream).Result(); err != nil || n > 200 {
		t.Fatalf("stream length after the request: %d (%v), want about 100", n, err)
	}

	// pre-migration on node-a alone: the orphan segment is an anomaly that
	// compaction does not remove, so the reply is not ok and exit is 1.
	r = runWatcher(t, 60*time.Second, "request", "pre-migration", "--nats", ns.URL, "--node", "node-a",
		"--target", "audit", "--timeout", "30s", "--expect", "1", "--json")
	wantCode(t, r, 1, "pre-migration with an orphan segment")
	replies = nil
	if err := json.Unmarshal([]byte(r.Stdout), &replies); err != nil {
		t.Fatalf("replies: %v\n%s", err, r)
	}
	if len(replies) != 1 || replies[0].Node != "node-a" || replies[0].OK {
		t.Fatalf("pre-migration replies: %s", r.Stdout)
	}
	found := false
	for _, an := range replies[0].Anomalies {
		found = found || (an.Type == "orphan_file" && strings.HasSuffix(an.Path, "audit.log.7"))
	}
	if !found {
		t.Fatalf("no orphan_file anomaly for audit.log.7: %s", r.Stdout)
	}
	if _, err := os.Stat(filepath.Join(aDir, "data", "audit.log.7")); err != nil {
		t.Fatalf("the orphan must be left alone: %v", err)
	}

	// The micro service: two answers to $SRV.PING, the endpoints in
	// $SRV.INFO, and the fleet status over NATS.
	nc, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nodes, err := triggers.DiscoverFleet(ctx, nc, triggers.DefaultSubjectPrefix, 5*time.Second)
	if err != nil || len(nodes) != 2 || nodes[0].Node != "node-a" || nodes[1].Node != "node-b" {
		t.Fatalf("$SRV.PING: %+v, %v", nodes, err)
	}
	msg, err := nc.Request("$SRV.INFO.papyra-watcher."+nodes[0].ID, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	// The service version is the one `watcher version` prints ("watcher
	// VERSION (commit …)"), as semver.
	r = runWatcher(t, 30*time.Second, "version")
	ver, _, _ := strings.Cut(strings.TrimPrefix(r.Stdout, "watcher "), " ")
	if info.Metadata["version"] != ver || info.Version != triggers.ServiceVersion(ver) {
		t.Errorf("$SRV.INFO version %q, metadata version %q; want %q and %q", info.Version, info.Metadata["version"], triggers.ServiceVersion(ver), ver)
	}
	subjects := map[string]bool{}
	for _, e := range info.Endpoints {
		subjects[e.Name+" "+e.Subject] = true
	}
	for _, want := range []string{"compact papyra.compaction.compact", "shared-compact papyra.compaction.compact",
		"post-backup papyra.compaction.post-backup", "status papyra.compaction.status", "node-pre-backup papyra.compaction.node.node-a.pre-backup"} {
		if !subjects[want] {
			t.Errorf("$SRV.INFO lacks endpoint %q: %v", want, subjects)
		}
	}
	began := time.Now()
	r = runWatcher(t, 60*time.Second, "request", "compact", "--nats", ns.URL, "--timeout", "30s", "--json")
	wantCode(t, r, 0, "compact without --expect")
	replies = nil
	if err := json.Unmarshal([]byte(r.Stdout), &replies); err != nil || len(replies) != 3 {
		t.Fatalf("compact without --expect: %d replies (%v):\n%s", len(replies), err, r)
	}
	if took := time.Since(began); took > 15*time.Second {
		t.Errorf("compact without --expect took %s", took)
	}
	r = runWatcher(t, 30*time.Second, "status", "--nats", ns.URL)
	wantCode(t, r, 0, "status --nats")
	for _, want := range []string{"node-a", "node-b", "audit", "events", "streams"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("status --nats lacks %q:\n%s", want, r.Stdout)
		}
	}

	for _, d := range []*daemonProc{a, b} {
		d.StopClean()
	}
}
