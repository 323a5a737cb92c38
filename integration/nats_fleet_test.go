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

	"github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/internal/testutil"
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

	for _, d := range []*daemonProc{a, b} {
		d.StopClean()
	}
}
