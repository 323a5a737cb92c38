package integration

// What someone who can write the data directory can do to the watcher: put
// a FIFO where a target file belongs, or swap the target's directory for a
// symbolic link to another directory while compactions run. Neither may
// hang the program nor make it read, write, link or remove anything outside
// the target's own directory.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestHostileFIFOTarget: a FIFO at the json target, and at the active file
// and at a segment of a rotating set: `watcher compact` exits 1 at once
// with an error that says what the file is, the other target is still
// compacted, and nothing is left behind (no placeholder, no staging).
func TestHostileFIFOTarget(t *testing.T) {
	for _, tc := range []struct{ name, fifo string }{
		{"json", "data/events.ndjson"},
		{"rotating-active", "data/audit.log"},
		{"rotating-segment", "data/audit.log.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "data/other.ndjson"), genRecords(0, 100, 1795600000, 40))
			if strings.HasPrefix(tc.name, "rotating") {
				writeFile(t, filepath.Join(dir, "data/audit.log.1"), genRecords(0, 10, 1795600000, 40))
			}
			if err := syscall.Mkfifo(filepath.Join(dir, tc.fifo), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := writeConfig(t, dir, baseConfig+`
[[target]]
name = "events"
backend = "json"
path = "data/events.ndjson"
[target.retention]
max_records = 10

[[target]]
name = "audit"
backend = "rotating"
path = "data/audit.log"
max_bytes = 100000
max_files = 4
[target.retention]
max_records = 10

[[target]]
name = "other"
backend = "json"
path = "data/other.ndjson"
[target.retention]
max_records = 10
`)
			r := runWatcher(t, 20*time.Second, "compact", "--config", cfg)
			wantCode(t, r, 1, "compact with a FIFO target")
			if r.Duration > 10*time.Second {
				t.Fatalf("took %s", r.Duration)
			}
			if !strings.Contains(r.Stderr, "FIFO") || !strings.Contains(r.Stderr, "not a regular file") {
				t.Fatalf("the error does not say what is wrong:\n%s", r)
			}
			if n := countLines(t, filepath.Join(dir, "data/other.ndjson")); n != 10 {
				t.Fatalf("the other target holds %d records, want 10", n)
			}
			if fi, err := os.Lstat(filepath.Join(dir, tc.fifo)); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
				t.Fatalf("the FIFO was touched: %v %v", fi, err)
			}
			wantNoLeftovers(t, filepath.Join(dir, "data"), filepath.Join(dir, "state"))
			entries, _ := os.ReadDir(filepath.Join(dir, "data"))
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), ".") {
					t.Errorf("left in data/: %s", e.Name())
				}
			}
		})
	}
}

// TestHostileParentDirectorySwap: while `watcher compact` runs again and
// again, another process renames the target's directory away, puts a
// symbolic link to a victim directory in its place and swaps back. Nothing
// is ever created, linked, changed or removed in the victim directory, and
// the target keeps every record it should. The json target runs with method
// "copy" (the temporary file, the old link and the rename that once went
// into the victim directory) and with "auto" (which compacts in place where
// the filesystem allows it).
func TestHostileParentDirectorySwap(t *testing.T) {
	for _, tc := range []struct{ name, backend, method string }{
		{"json", "json", "copy"},
		{"json-auto", "json", "auto"},
		{"rotating", "rotating", "auto"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			data := filepath.Join(base, "data")
			victim := filepath.Join(base, "victim")
			aside := filepath.Join(base, "data-aside")
			const victimContent = "{\"kind\": \"event\", \"timestamp\": 1.0}\n"
			writeFile(t, filepath.Join(victim, "t.ndjson"), []byte(victimContent))
			writeFile(t, filepath.Join(victim, "t.log"), []byte(victimContent))
			victimBefore := readDirFiles(t, victim)
			target := `name = "t"
backend = "json"
path = "data/t.ndjson"
method = "` + tc.method + `"`
			if tc.backend == "rotating" {
				target = `name = "t"
backend = "rotating"
path = "data/t.log"
max_bytes = 200000
max_files = 4`
			}
			const keep, perRound = 5000, 8000
			cfg := writeConfig(t, base, baseConfig+`
[[target]]
`+target+`
[target.retention]
max_records = `+strconv.Itoa(keep)+`
`)
			file := filepath.Join(data, "t.ndjson")
			if tc.backend == "rotating" {
				file = filepath.Join(data, "t.log")
			}
			var stop atomic.Bool
			var swaps atomic.Int64
			var wg sync.WaitGroup
			var mu sync.Mutex // the directory is in place while held
			wg.Go(func() {
				for !stop.Load() {
					mu.Lock()
					if os.Rename(data, aside) == nil {
						if os.Symlink("victim", data) == nil {
							time.Sleep(200 * time.Microsecond)
							os.Remove(data)
						}
						if err := os.Rename(aside, data); err != nil {
							t.Errorf("swap back: %v", err)
						}
						swaps.Add(1)
					}
					mu.Unlock()
					time.Sleep(300 * time.Microsecond)
				}
			})
			stopSwaps := func() {
				stop.Store(true)
				wg.Wait()
			}
			wantVictimUntouched := func(when string) {
				t.Helper()
				if after := readDirFiles(t, victim); len(after) != len(victimBefore) ||
					string(after["t.ndjson"]) != victimContent || string(after["t.log"]) != victimContent {
					stopSwaps()
					t.Fatalf("%s: the victim directory changed: %v", when, keys(after))
				}
			}
			rounds, stormCopies := 40, 0
			var newest []byte // the records the last round must leave
			for i := range rounds {
				all := genRecords(i*perRound, perRound, 1795600000, 60)
				newest = genRecords(i*perRound+perRound-keep, keep, 1795600000, 60)
				mu.Lock()
				writeFile(t, file, all)
				mu.Unlock()
				// May fail: the directory moves under it (its name is a
				// link at the instant it is opened).
				r := runWatcher(t, 60*time.Second, "compact", "--json", "--config", cfg)
				wantVictimUntouched(fmt.Sprintf("round %d", i))
				if tc.backend == "rotating" {
					continue
				}
				done := false // the round's compaction ran under the swaps
				if r.Code == 0 {
					var reps []report
					if err := json.Unmarshal([]byte(r.Stdout), &reps); err != nil || len(reps) != 1 {
						stopSwaps()
						t.Fatalf("round %d: report: %v\n%s", i, err, r)
					}
					switch m := reps[0].Method; {
					case m == "none" && reps[0].BeforeBytes != nil && *reps[0].BeforeBytes == 0:
						// The directory was away (renamed, its link not
						// yet in place) when it was opened: an empty
						// target, nothing done.
					case tc.method == "copy" && m != "copy":
						stopSwaps()
						t.Fatalf("round %d: not a copy:\n%s", i, r)
					default:
						done = true
					}
				}
				if done && tc.method == "copy" {
					stormCopies++
				}
				if !done {
					// Finish the round undisturbed (recovery included),
					// so that the next round starts from a settled target.
					mu.Lock()
					r = runWatcher(t, 60*time.Second, "compact", "--config", cfg)
					mu.Unlock()
					if r.Code != 0 {
						stopSwaps()
						t.Fatalf("round %d: undisturbed compaction after a disturbed one:\n%s", i, r)
					}
				}
				mu.Lock()
				got, err := os.ReadFile(file)
				mu.Unlock()
				if err != nil {
					stopSwaps()
					t.Fatal(err)
				}
				got = trimFiller(t, file, got) // auto: a compaction in place may leave one
				if !bytes.Equal(got, newest) {
					stopSwaps()
					t.Fatalf("round %d: the target holds %d lines, not the newest %d records of the round (victim's line in it: %v)",
						i, bytes.Count(got, []byte("\n")), keep, bytes.Contains(got, []byte(victimContent)))
				}
			}
			stopSwaps()
			if swaps.Load() < int64(rounds) {
				t.Fatalf("only %d directory swaps in %d rounds: the test did not race", swaps.Load(), rounds)
			}
			if tc.method == "copy" && tc.backend == "json" {
				t.Logf("%d of %d rounds copied under the swaps", stormCopies, rounds)
				if stormCopies == 0 {
					t.Fatalf("no round's copy completed under the swaps: the copy path did not race")
				}
			}
			entries, _ := os.ReadDir(victim)
			if len(entries) != 2 {
				t.Fatalf("victim directory holds %d entries", len(entries))
			}
			// After the storm an undisturbed compaction leaves the newest
			// 5,000 records and nothing else behind.
			r := runWatcher(t, 60*time.Second, "compact", "--config", cfg)
			wantCode(t, r, 0, "compact after the swaps")
			wantNoLeftovers(t, data, filepath.Join(base, "state"))
			if tc.backend == "json" {
				if got := readTarget(t, file); !bytes.Equal(got, newest) {
					t.Fatalf("after the swaps the target holds %d lines, not the newest %d records", bytes.Count(got, []byte("\n")), keep)
				}
			}
		})
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestHostileFIFOTargetDaemon: `watcher run` with a FIFO at one json
// target's path and an ordinary json target beside it (one compaction at a
// time). The FIFO target's compactions fail at once with an error that says
// what the file is, /status never shows it compacting for longer than
// compaction_timeout, the other target keeps being compacted (it never
// waits for the slot behind a hung compaction), and SIGTERM stops the
// daemon within shutdown_grace.
func TestHostileFIFOTargetDaemon(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	events := filepath.Join(dir, "data", "events.ndjson")
	writeFile(t, events, genRecords(0, 100, 1795599000, 40))
	fifo := filepath.Join(dir, "data", "pipe.ndjson")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	const timeout, grace = 3 * time.Second, 2 * time.Second
	timer := `[target.triggers.timer]
interval = "1s"
`
	cfg := writeConfig(t, dir, daemonHeader(addr, `compaction_timeout = "3s"`+"\n"+`shutdown_grace = "2s"`, "max_concurrent = 1")+
		jsonTarget("pipe", "pipe.ndjson", 10)+timer+jsonTarget("events", "events.ndjson", 10)+timer)
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	// /status, polled all along: how long each target has been compacting,
	// or waiting for the slot, without a break.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	var problems []string
	wg.Go(func() {
		since := map[string]time.Time{}
		for !stop.Load() {
			doc, err := d.status()
			now := time.Now()
			for _, ts := range doc.Targets {
				key := ts.Name + " " + ts.State
				if ts.Compacting {
					key = ts.Name + " compacting"
				}
				if ts.State != "waiting_for_slot" && !ts.Compacting {
					delete(since, ts.Name+" waiting_for_slot")
					delete(since, ts.Name+" compacting")
					continue
				}
				if _, ok := since[key]; !ok {
					since[key] = now
				}
				if now.Sub(since[key]) > timeout {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%s for %s", key, now.Sub(since[key]).Round(time.Millisecond)))
					mu.Unlock()
					delete(since, key)
				}
			}
			if err != nil && !d.Exited() {
				mu.Lock()
				problems = append(problems, err.Error())
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	stopPolling := func() []string {
		stop.Store(true)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return problems
	}
	defer stopPolling()

	rep := d.waitReport(20*time.Second, "pipe", func(r report) bool { return r.Error != "" })
	if !strings.Contains(rep.Error, "is a FIFO (named pipe): not a regular file") || !strings.Contains(rep.Error, fifo) {
		t.Fatalf("the FIFO target's error does not say what is wrong: %q", rep.Error)
	}
	if rep.DurationMS > float64(timeout.Milliseconds()) {
		t.Fatalf("the FIFO target's compaction took %.0f ms", rep.DurationMS)
	}
	// The other target is compacted, again after more records arrive.
	eventually(t, 20*time.Second, "events compacted to 10 records", func() (bool, string) {
		n := countLines(t, events)
		return n == 10, fmt.Sprintf("%d lines", n)
	})
	appendRecords(t, events, genRecords(100, 50, 1795599500, 40))
	eventually(t, 20*time.Second, "events compacted again to 10 records", func() (bool, string) {
		n := countLines(t, events)
		return n == 10, fmt.Sprintf("%d lines", n)
	})
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the FIFO was touched: %v %v", fi, err)
	}
	if p := stopPolling(); len(p) > 0 {
		t.Fatalf("/status: %s", strings.Join(p, "; "))
	}

	sent := time.Now()
	d.Signal(syscall.SIGTERM)
	code := d.Wait(grace + 10*time.Second)
	if took := time.Since(sent); took > grace {
		t.Fatalf("SIGTERM: exited after %s, more than shutdown_grace %s", took.Round(time.Millisecond), grace)
	}
	if code != 0 {
		t.Fatalf("SIGTERM: exit %d, want 0", code)
	}
}
