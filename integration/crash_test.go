package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash test: `watcher compact` is SIGKILLed at a random instant, again
// and again; after every kill the target must hold either its original
// content or exactly the compacted result (never a lost retained record),
// and the next uncrashed run must produce the compacted result byte for
// byte and leave no leftovers.
//
// WATCHER_CRASH_ROUNDS (default 50) sets the rounds per backend and
// WATCHER_CRASH_RECORDS (default 60000) the json target's record count.
//
// Both targets set method = "copy": the subject is the rewrite's commit
// (one rename for json, the journaled swap of a rotating set) and the
// temporary and staging files it has in flight, and "the original or
// exactly the expected result, byte for byte" is the copy's contract. An
// in-place compaction leaves a filler line and, killed between its
// collapse and its filler write, a head that only the next run repairs;
// the live-writer campaign (TestCrashLiveWriter) and
// TestInPlaceLiveWriterKill kill it.

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q is not a positive integer", name, v)
	}
	return n
}

// crashTarget is one target the crash test works on.
type crashTarget struct {
	name     string
	dir      string // holds config.toml, data/ and state/
	data     string
	state    string
	config   string
	original map[string][]byte // the files of data/ before compaction
	expected map[string][]byte // and after
	// atomicOnDisk is true when the backend commits with one rename, so
	// that the raw state after any kill is the original or the result. A
	// multi-file swap may be caught half done, with its journal in state/;
	// the next run's recovery completes or rolls it back.
	atomicOnDisk bool
}

// reset puts the original files back and empties the state directory.
func (c *crashTarget) reset(t *testing.T) {
	t.Helper()
	for _, d := range []string{c.data, c.state} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(c.data, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range c.original {
		writeFile(t, filepath.Join(c.data, name), data)
	}
}

// content returns data/'s files, leaving out watcher temporary files.
func (c *crashTarget) content(t *testing.T) map[string][]byte {
	t.Helper()
	files := readDirFiles(t, c.data)
	for name := range files {
		if strings.Contains(name, ".watcher-") {
			delete(files, name)
		}
	}
	return files
}

func sameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for name, d := range a {
		if e, ok := b[name]; !ok || !bytes.Equal(d, e) {
			return false
		}
	}
	return true
}

// describe says how files differ from the original and the expected
// result, for a failure message.
func (c *crashTarget) describe(files map[string][]byte) string {
	var b strings.Builder
	for _, name := range sortedKeys(files, c.original, c.expected) {
		fmt.Fprintf(&b, "\n  %-22s now %8d bytes, original %8d, expected %8d", name,
			sizeOr(files, name), sizeOr(c.original, name), sizeOr(c.expected, name))
	}
	return b.String()
}

func sizeOr(m map[string][]byte, k string) int {
	if d, ok := m[k]; ok {
		return len(d)
	}
	return -1
}

func sortedKeys(ms ...map[string][]byte) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range ms {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	sort.Strings(out)
	return out
}

func (c *crashTarget) hasTemp() bool {
	entries, _ := os.ReadDir(c.data)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".watcher-") {
			return true
		}
	}
	return false
}

func (c *crashTarget) hasJournal() bool {
	found := false
	filepath.WalkDir(c.state, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(d.Name(), ".lock") {
			found = true
		}
		return nil
	})
	return found
}

const crashNow = "1795600000"

// compactArgs are the arguments of one compaction of c.
func (c *crashTarget) compactArgs(extra ...string) []string {
	return append([]string{"compact", "--config", c.config, "--now", crashNow, "--json"}, extra...)
}

// newJSONCrashTarget is n records (about 200 bytes each) with max_records
// n/2: the result is the newer half of the lines.
func newJSONCrashTarget(t *testing.T, n int) *crashTarget {
	dir := t.TempDir()
	lines := genRecords(0, n, 1795599000, 90)
	all := splitLines(lines)
	keep := n / 2
	c := &crashTarget{name: "json", dir: dir, data: filepath.Join(dir, "data"), state: filepath.Join(dir, "state"),
		original:     map[string][]byte{"events.ndjson": lines},
		expected:     map[string][]byte{"events.ndjson": bytes.Join(all[n-keep:], nil)},
		atomicOnDisk: true}
	c.config = writeConfig(t, dir, baseConfig+fmt.Sprintf(`
[[target]]
name = "events"
backend = "json"
path = "data/events.ndjson"
method = "copy"
[target.retention]
max_records = %d
`, keep))
	return c
}

// chunk cuts lines, oldest first, into files of at most maxBytes (a file
// holds at least one line), keeps the newest maxFiles, and names them as
// the rotating backend does: active = newest, then active.1, ....
func chunk(lines [][]byte, active string, maxBytes int64, maxFiles int) map[string][]byte {
	var chunks [][]byte
	var cur []byte
	for _, l := range lines {
		if len(cur) > 0 && int64(len(cur)+len(l)) > maxBytes {
			chunks = append(chunks, cur)
			cur = nil
		}
		cur = append(cur, l...)
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	if len(chunks) > maxFiles {
		chunks = chunks[len(chunks)-maxFiles:]
	}
	out := map[string][]byte{}
	for i := range chunks {
		name := active
		if age := len(chunks) - 1 - i; age > 0 {
			name += "." + strconv.Itoa(age)
		}
		out[name] = chunks[i]
	}
	return out
}

// TestChunkMatchesGolden checks the test's own model of the rotating
// layout against Papyra's golden outputs.
func TestChunkMatchesGolden(t *testing.T) {
	cases, _ := filepath.Glob("testdata/papyra/rotating/*/case.json")
	if len(cases) == 0 {
		t.Fatal("no rotating golden cases")
	}
	for _, cj := range cases {
		src := filepath.Dir(cj)
		c := loadCase(t, src)
		exp := readDirFiles(t, filepath.Join(src, "expected"))
		var lines [][]byte
		for i := c.MaxFiles - 1; i >= 0; i-- {
			name := c.Active
			if i > 0 {
				name += "." + strconv.Itoa(i)
			}
			lines = append(lines, splitLines(exp[name])...)
		}
		if got := chunk(lines, c.Active, c.MaxBytes, c.MaxFiles); !sameFiles(got, exp) {
			t.Errorf("%s: the test's chunk model does not reproduce expected/", src)
		}
	}
}

// newRotatingCrashTarget is a stuck rotation set: four full segments and
// an overgrown active file, with max_records keeping what fits in about
// three segments.
func newRotatingCrashTarget(t *testing.T, n int) *crashTarget {
	dir := t.TempDir()
	const maxBytes, maxFiles = 256 << 10, 5
	all := splitLines(genRecords(0, n, 1795599000, 90))
	// The writer filled .4 … .1 then got stuck: the rest is in the active
	// file.
	orig := map[string][]byte{}
	rest := all
	for seg := maxFiles - 1; seg >= 1; seg-- {
		var cur []byte
		for len(rest) > 0 && int64(len(cur)+len(rest[0])) <= maxBytes {
			cur = append(cur, rest[0]...)
			rest = rest[1:]
		}
		orig["papyra.log."+strconv.Itoa(seg)] = cur
	}
	orig["papyra.log"] = bytes.Join(rest, nil)
	keep := 3 * maxBytes / len(all[0])
	if keep >= n {
		t.Fatalf("rotating crash target too small: %d records", n)
	}
	c := &crashTarget{name: "rotating", dir: dir, data: filepath.Join(dir, "data"), state: filepath.Join(dir, "state"),
		original: orig, expected: chunk(all[n-keep:], "papyra.log", maxBytes, maxFiles)}
	c.config = writeConfig(t, dir, baseConfig+fmt.Sprintf(`
[[target]]
name = "audit"
backend = "rotating"
path = "data/papyra.log"
max_bytes = %d
max_files = %d
method = "copy"
[target.retention]
max_records = %d
`, maxBytes, maxFiles, keep))
	return c
}

func TestCrashKill(t *testing.T) {
	rounds := envInt(t, "WATCHER_CRASH_ROUNDS", 50)
	records := envInt(t, "WATCHER_CRASH_RECORDS", 60000)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WATCHER_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WATCHER_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("WATCHER_CRASH_SEED=%d rounds=%d records=%d", seed, rounds, records)
	t.Run("json", func(t *testing.T) {
		crashRounds(t, newJSONCrashTarget(t, records), rounds, rand.New(rand.NewPCG(seed, 1)))
	})
	t.Run("rotating", func(t *testing.T) {
		crashRounds(t, newRotatingCrashTarget(t, records/3), rounds, rand.New(rand.NewPCG(seed, 2)))
	})
}

func crashRounds(t *testing.T, c *crashTarget, rounds int, rng *rand.Rand) {
	// One uncrashed run: it must produce the expected result, and it gives
	// the typical run time.
	var runs []time.Duration
	for range 3 {
		c.reset(t)
		start := time.Now()
		r := runWatcher(t, 2*time.Minute, c.compactArgs()...)
		runs = append(runs, time.Since(start))
		wantCode(t, r, 0, "uncrashed compact")
		if got := c.content(t); !sameFiles(got, c.expected) {
			t.Fatalf("uncrashed compaction is not the expected result:%s", c.describe(got))
		}
		wantNoLeftovers(t, c.data, c.state)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i] < runs[j] })
	typical := runs[1]
	t.Logf("%s: %d files, %d bytes; an uncrashed run takes %s", c.name, len(c.original), sumBytes(c.original), typical)

	var killedOriginal, killedMidWrite, killedAfterCommit, killedMidSwap, completed, inFlight int
	for round := range rounds {
		c.reset(t)
		delay := time.Duration(rng.Int64N(int64(typical)*12/10 + 1))
		cmd := exec.Command(watcherBin, c.compactArgs()...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay) // when to kill: drawn at random, not a wait for success
		tempAtKill := c.hasTemp()
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		killed := ws.Signaled()
		if !killed && ws.ExitStatus() != 0 {
			t.Fatalf("round %d: compact failed on its own (exit %d):\n%s", round, ws.ExitStatus(), out.String())
		}

		if killed && tempAtKill {
			inFlight++
		}
		got := c.content(t)
		switch {
		case !killed:
			completed++
			if !sameFiles(got, c.expected) {
				t.Fatalf("round %d: a completed compaction is not the expected result:%s", round, c.describe(got))
			}
		case sameFiles(got, c.original):
			if tempAtKill {
				killedMidWrite++
			} else {
				killedOriginal++
			}
		case sameFiles(got, c.expected):
			killedAfterCommit++
		case !c.atomicOnDisk && c.hasJournal():
			killedMidSwap++
			// Recovery (run first by every compaction, dry runs too) must
			// complete or roll back the swap.
			r := runWatcher(t, time.Minute, c.compactArgs("--dry-run")...)
			wantCode(t, r, 0, fmt.Sprintf("round %d: dry run after a kill mid-swap", round))
			if got := c.content(t); !sameFiles(got, c.original) && !sameFiles(got, c.expected) {
				t.Fatalf("round %d: killed after %s mid-swap; after recovery the target is neither the original nor the expected result:%s",
					round, delay, c.describe(got))
			}
		default:
			t.Fatalf("round %d: killed after %s (typical run %s); the target is neither the original nor the expected result (journal in state/: %v):%s",
				round, delay, typical, c.hasJournal(), c.describe(got))
		}

		r := runWatcher(t, 2*time.Minute, c.compactArgs()...)
		wantCode(t, r, 0, fmt.Sprintf("round %d: compact after a kill at %s", round, delay))
		if got := c.content(t); !sameFiles(got, c.expected) {
			t.Fatalf("round %d: compact after a kill at %s is not the expected result:%s", round, delay, c.describe(got))
		}
		if l := append(leftovers(t, c.data), leftovers(t, c.state)...); len(l) > 0 {
			// Not fatal: reset starts the next round clean, and the
			// other rounds still tell whether data is ever lost.
			t.Errorf("round %d: leftovers after the compaction that followed a kill at %s: %v", round, delay, l)
		}
	}
	t.Logf("%s: %d rounds: killed with the original intact %d (of which with the output half written %d), mid-swap %d, after the commit %d; completed before the kill %d; killed while watcher files were in flight %d",
		c.name, rounds, killedOriginal+killedMidWrite, killedMidWrite, killedMidSwap, killedAfterCommit, completed, inFlight)
	if inFlight == 0 {
		t.Errorf("%s: no kill landed while a temporary or staging file existed (typical run %s): the test does not exercise what it should; raise WATCHER_CRASH_RECORDS", c.name, typical)
	}
}
