package rotating

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/internal/testutil"
)

// rotRecordsOf returns the record lines (without their newline) of the set
// whose active file is named active among files (name → content), oldest
// first. It fails the test where a file would not pass Papyra's scan (an
// unterminated last line, a line json cannot parse: a blank or
// whitespace-only one) and where a line that is not an object is anything
// but a filler line at the start of a file.
func rotRecordsOf(t *testing.T, files map[string][]byte, active string, maxFiles int) []string {
	t.Helper()
	var recs []string
	for i := maxFiles - 1; i >= 0; i-- {
		name := filepath.Base(segName(active, i))
		b, ok := files[name]
		if !ok {
			continue
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Errorf("%s: unterminated last line %.80q (Papyra's scan: TRUNCATED_LINE)", name, b[bytes.LastIndexByte(b, '\n')+1:])
		}
		for n, line := range bytes.SplitAfter(b, []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			content := bytes.TrimSuffix(line, []byte{'\n'})
			if !json.Valid(content) {
				t.Errorf("%s line %d: %.80q does not parse (Papyra's scan: CORRUPTED_LINE)", name, n+1, content)
				continue
			}
			if trimmed := bytes.TrimSpace(content); trimmed[0] == '{' {
				recs = append(recs, string(content))
				continue
			}
			if n != 0 || !ndjson.IsFiller(line) {
				t.Errorf("%s line %d: %.80q is not a record (only a filler line may start a file)", name, n+1, content)
			}
		}
	}
	return recs
}

// rotSameRecords compares two record sequences.
func rotSameRecords(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d records, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Errorf("record %d: %.100q, want %.100q", i, got[i], want[i])
			return
		}
	}
}

// ipRec is record seq of the in-place tests, about size bytes long with its
// newline.
func ipRec(seq, size int) string {
	head := fmt.Sprintf(`{"kind":"event","system_id":"s","actor_address":"a","event_type":"e","payload":{"seq":%d,"pad":"`, seq)
	tail := fmt.Sprintf(`"},"timestamp":%d.5}`+"\n", 1795599000+seq)
	return head + strings.Repeat("x", max(size-len(head)-len(tail), 0)) + tail
}

// ipFixture writes into a new directory under parent a set whose files
// (index → number of records) hold consecutive records from seq 0, oldest
// first, and returns it (method auto) with all its records, oldest first,
// without their newline.
func ipFixture(t *testing.T, parent string, maxBytes int64, maxFiles int, counts map[int]int, size int) (*rotSet, []string) {
	t.Helper()
	dir, err := os.MkdirTemp(parent, "set")
	if err != nil {
		t.Fatal(err)
	}
	s := &rotSet{dir: dir, path: filepath.Join(dir, "papyra.log"), state: filepath.Join(t.TempDir(), "state"),
		maxBytes: maxBytes, maxFiles: maxFiles, method: backends.MethodAuto}
	var all []string
	files := map[int]string{}
	seq := 0
	for i := maxFiles - 1; i >= 0; i-- {
		n, ok := counts[i]
		if !ok {
			continue
		}
		var b strings.Builder
		for range n {
			r := ipRec(seq, size)
			b.WriteString(r)
			all = append(all, strings.TrimSuffix(r, "\n"))
			seq++
		}
		files[i] = b.String()
	}
	s.write(t, files)
	return s, all
}

// records returns the set's records, oldest first (rotRecordsOf: the files
// must pass Papyra's scan).
func (s *rotSet) records(t *testing.T) []string {
	t.Helper()
	return rotRecordsOf(t, rotReadDir(t, s.dir), "papyra.log", s.maxFiles)
}

// fileID returns the inode and size of name, or 0, -1 when it is missing.
func fileID(t *testing.T, name string) (uint64, int64) {
	t.Helper()
	fi, err := os.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return 0, -1
	}
	if err != nil {
		t.Fatal(err)
	}
	_, ino := fsx.InodeOf(fi)
	return ino, fi.Size()
}

// setBytes sums the sizes of the set's files.
func (s *rotSet) setBytes(t *testing.T) int64 {
	t.Helper()
	var n int64
	for i := 0; i < s.maxFiles; i++ {
		if _, size := fileID(t, segName(s.path, i)); size > 0 {
			n += size
		}
	}
	return n
}

func keepRecords(n int64) backends.Retention { return backends.Retention{MaxRecords: &n} }

// TestRotatingInPlaceExt4: on ext4, with method auto, a compaction whose
// survivors are a suffix of the set unlinks the segments retention drops
// entirely and cuts the head of the one it drops partly in place (same
// inode, smaller), giving exactly the newest records; a dry run says so and
// changes nothing; a compaction with nothing to drop changes nothing
// (method none), and a later one cuts again, over the filler line the
// first one left.
func TestRotatingInPlaceExt4(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	// Four files of at most 64 KiB: 300 records of 200 bytes in each
	// segment, 100 in the active file.
	s, all := ipFixture(t, mnt, 64<<10, 4, map[int]int{3: 300, 2: 300, 1: 300, 0: 100}, 200)
	b := s.backend(t)
	ctx := context.Background()
	ino2, size2 := fileID(t, segName(s.path, 2))
	ino0, _ := fileID(t, s.path)

	before := s.layout(t)
	drep, err := b.Compact(ctx, backends.CompactOptions{Retention: keepRecords(550), DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if drep.Method != backends.MethodInPlace {
		t.Errorf("dry run: method %q, want in_place (notes %q)", drep.Method, drep.Notes)
	}
	sameLayout(t, s.layout(t), before)

	rep, err := b.Compact(ctx, backends.CompactOptions{Retention: keepRecords(550)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodInPlace {
		t.Fatalf("method %q, want in_place (notes %q)", rep.Method, rep.Notes)
	}
	rotSameRecords(t, s.records(t), all[450:])
	if ino, _ := fileID(t, segName(s.path, 3)); ino != 0 {
		t.Errorf("%s survives: retention drops it entirely", segName(s.path, 3))
	}
	if ino, size := fileID(t, segName(s.path, 2)); ino != ino2 || size >= size2-4096 {
		t.Errorf("%s: inode %d size %d, want inode %d (unchanged) and at least a block less than %d", segName(s.path, 2), ino, size, ino2, size2)
	}
	if ino, _ := fileID(t, s.path); ino != ino0 {
		t.Errorf("the active file was replaced")
	}
	if rep.BeforeRecords != 1000 || rep.AfterRecords != 550 || rep.AppendedDuring != 0 {
		t.Errorf("records %d → %d (appended %d), want 1000 → 550", rep.BeforeRecords, rep.AfterRecords, rep.AppendedDuring)
	}
	if rep.AfterBytes == nil || *rep.AfterBytes != s.setBytes(t) || drep.AfterBytes == nil || *drep.AfterBytes != *rep.AfterBytes {
		t.Errorf("after_bytes %v (dry run %v), the files hold %d", rep.AfterBytes, drep.AfterBytes, s.setBytes(t))
	}
	if rep.Dropped != drep.Dropped || rep.BeforeRecords != drep.BeforeRecords {
		t.Errorf("the dry run's report differs: %+v, %+v", drep, rep)
	}
	s.assertClean(t)

	// Nothing to drop: nothing changes.
	layout := s.layout(t)
	rep, err = b.Compact(ctx, backends.CompactOptions{Retention: keepRecords(550)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodNone || rep.AfterRecords != 550 || rep.Dropped != (backends.Dropped{}) {
		t.Errorf("second compaction: method %q, %d records, dropped %+v; want none, 550, nothing", rep.Method, rep.AfterRecords, rep.Dropped)
	}
	sameLayout(t, s.layout(t), layout)
	s.assertClean(t)

	// The cut moves into .1: .2 (with its filler line) goes.
	ino1, _ := fileID(t, segName(s.path, 1))
	rep, err = b.Compact(ctx, backends.CompactOptions{Retention: keepRecords(120)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodInPlace {
		t.Fatalf("third compaction: method %q (notes %q)", rep.Method, rep.Notes)
	}
	rotSameRecords(t, s.records(t), all[880:])
	if ino, _ := fileID(t, segName(s.path, 2)); ino != 0 {
		t.Errorf("%s survives", segName(s.path, 2))
	}
	if ino, _ := fileID(t, segName(s.path, 1)); ino != ino1 {
		t.Errorf("%s was replaced", segName(s.path, 1))
	}
	s.assertClean(t)

	// The cut moves into the active file.
	rep, err = b.Compact(ctx, backends.CompactOptions{Retention: keepRecords(30)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodInPlace {
		t.Fatalf("fourth compaction: method %q (notes %q)", rep.Method, rep.Notes)
	}
	rotSameRecords(t, s.records(t), all[970:])
	if ino, _ := fileID(t, s.path); ino != ino0 {
		t.Errorf("the active file was replaced")
	}
	for i := 1; i < 4; i++ {
		if ino, _ := fileID(t, segName(s.path, i)); ino != 0 {
			t.Errorf("%s survives", segName(s.path, i))
		}
	}
	s.assertClean(t)
}

// TestRotatingInPlaceTmpfs: tmpfs cannot collapse a range, so the same
// compaction copies, and the report's notes say why; a dry run says so too.
func TestRotatingInPlaceTmpfs(t *testing.T) {
	mnt := testutil.MountTmpfs(t, 64)
	s, all := ipFixture(t, mnt, 64<<10, 4, map[int]int{3: 300, 2: 300, 1: 300, 0: 100}, 200)
	b := s.backend(t)
	for _, dry := range []bool{true, false} {
		rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(550), DryRun: dry})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Method != backends.MethodCopy || !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "cannot collapse") }) {
			t.Errorf("dry=%v: method %q, notes %q; want copy, with a note that the filesystem cannot collapse", dry, rep.Method, rep.Notes)
		}
	}
	rotSameRecords(t, s.records(t), all[450:])
	s.assertClean(t)
}

// TestRotatingInPlaceRefused: a file with a second hard link (a backup
// snapshot) and a partly dropped file another process keeps open (no write
// lease) make the compaction copy, with a note; so does a set whose
// survivors are not a suffix of it (no note: nothing an operator can do).
func TestRotatingInPlaceRefused(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	counts := map[int]int{3: 300, 2: 300, 1: 300, 0: 100}
	hasNote := func(rep backends.Report, s string) bool {
		return slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, s) })
	}
	t.Run("linked", func(t *testing.T) {
		s, all := ipFixture(t, mnt, 64<<10, 4, counts, 200)
		if err := os.Link(segName(s.path, 1), filepath.Join(mnt, "snapshot-link")); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(filepath.Join(mnt, "snapshot-link"))
		rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(550)})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Method != backends.MethodCopy || !hasNote(rep, "hard links") {
			t.Errorf("method %q, notes %q; want copy with a note on the hard links", rep.Method, rep.Notes)
		}
		rotSameRecords(t, s.records(t), all[450:])
		s.assertClean(t)
	})
	t.Run("open", func(t *testing.T) {
		old := rotLeaseTries
		rotLeaseTries = 2
		defer func() { rotLeaseTries = old }()
		s, all := ipFixture(t, mnt, 64<<10, 4, counts, 200)
		f, err := os.Open(segName(s.path, 2))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(550)})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Method != backends.MethodCopy || !hasNote(rep, "no write lease") {
			t.Errorf("method %q, notes %q; want copy with a note on the lease", rep.Method, rep.Notes)
		}
		rotSameRecords(t, s.records(t), all[450:])
		s.assertClean(t)
	})
	t.Run("not a suffix", func(t *testing.T) {
		s, all := ipFixture(t, mnt, 64<<10, 4, counts, 200)
		// A line a rewrite drops among the survivors.
		f, err := os.OpenFile(segName(s.path, 1), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("not json\n")
		f.Close()
		rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(550)})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Method != backends.MethodCopy || len(rep.Notes) > 1 {
			t.Errorf("method %q, notes %q; want copy", rep.Method, rep.Notes)
		}
		rotSameRecords(t, s.records(t), all[450:])
	})
	t.Run("overgrown active", func(t *testing.T) {
		// A stuck rotation: the active file far beyond max_bytes.
		s, all := ipFixture(t, mnt, 64<<10, 3, map[int]int{2: 300, 1: 300, 0: 2000}, 200)
		rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(500)})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Method != backends.MethodCopy {
			t.Errorf("method %q, want copy (the survivors need new chunks)", rep.Method)
		}
		rotSameRecords(t, s.records(t), all[2100:])
	})
}

// TestRotatingInPlaceConcurrentRotation: a rotation between the snapshot
// and the in-place steps (one in flight when the placeholder appeared) is
// seen once the lease is held, before anything changes: the attempt ends
// with ErrConcurrentRotation and the writer's files as it left them, and a
// retry compacts in place.
func TestRotatingInPlaceConcurrentRotation(t *testing.T) {
	old := rotRetries
	rotRetries = 0
	defer func() { rotRetries = old }()
	mnt := testutil.MountExt4(t, 64)
	s, all := ipFixture(t, mnt, 64<<10, 5, map[int]int{3: 300, 2: 300, 1: 300, 0: 100}, 200)
	newRec := ipRec(len(all), 200)
	// What the writer leaves (the files cannot be read in the hook: the
	// compaction holds the lease of one of them).
	before := s.layout(t)
	afterRotation := map[string]string{"papyra.log": newRec}
	for i := 0; i < 4; i++ {
		afterRotation[filepath.Base(segName(s.path, i+1))] = before[filepath.Base(segName(s.path, i))]
	}
	fsx.SetCrashHook(func(point string) error {
		if point == "inplace-leased" {
			for i := 3; i >= 0; i-- {
				if err := os.Rename(segName(s.path, i), segName(s.path, i+1)); err != nil {
					return err
				}
			}
			return os.WriteFile(s.path, []byte(newRec), 0o644)
		}
		return nil
	})
	defer func() { fsx.SetCrashHook(nil) }()
	_, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(550)})
	if !errors.Is(err, backends.ErrConcurrentRotation) {
		t.Fatalf("got %v, want ErrConcurrentRotation", err)
	}
	fsx.SetCrashHook(nil)
	sameLayout(t, s.layout(t), afterRotation)
	s.assertClean(t)
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(550)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodInPlace {
		t.Errorf("retry: method %q (notes %q)", rep.Method, rep.Notes)
	}
	all = append(all, strings.TrimSuffix(newRec, "\n"))
	rotSameRecords(t, s.records(t), all[len(all)-550:])
}

// TestRotatingInPlaceCrashAtEveryPoint: an in-place compaction killed at
// each of its points (fsx.SetCrashHook), then Recover, itself killed at each
// of its points in turn before it runs to the end: no record is lost or
// doubled. Before the in-place journal the set is as it was; from the
// journal on, Recover completes the compaction. Two sets: one whose top
// segment is emptied, another unlinked, and .2 cut while the writer
// appends to the active file; one where the placeholder is the top, three
// segments are unlinked and the active file is cut. After each kill the
// writer appends one more record before Recover runs.
func TestRotatingInPlaceCrashAtEveryPoint(t *testing.T) {
	mnt := testutil.MountExt4(t, 128)
	for _, tc := range []struct {
		name     string
		maxFiles int
		counts   map[int]int
		keep     int64
		append   bool
	}{
		{"segment", 5, map[int]int{4: 300, 3: 300, 2: 300, 1: 300, 0: 100}, 550, true},
		{"active", 6, map[int]int{3: 300, 2: 300, 1: 300, 0: 100}, 30, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := backends.CompactOptions{Retention: keepRecords(tc.keep)}
			var appended string
			hook := func(s *rotSet, crashAt string, points *[]string) func(string) error {
				return func(p string) error {
					if points != nil {
						*points = append(*points, p)
					}
					if p == "inplace-leased" && tc.append {
						f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0)
						if err != nil {
							return err
						}
						f.WriteString(appended + "\n")
						f.Close()
					}
					if p == crashAt {
						return errors.New("killed at " + p)
					}
					return nil
				}
			}
			// The points of an uninterrupted run.
			ref, all := ipFixture(t, mnt, 64<<10, tc.maxFiles, tc.counts, 200)
			appended = strings.TrimSuffix(ipRec(len(all), 200), "\n")
			afterKill := strings.TrimSuffix(ipRec(len(all)+1, 200), "\n")
			var points []string
			fsx.SetCrashHook(hook(ref, "", &points))
			rep, err := ref.backend(t).Compact(context.Background(), opts)
			fsx.SetCrashHook(nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Method != backends.MethodInPlace {
				t.Fatalf("method %q (notes %q)", rep.Method, rep.Notes)
			}
			withAppend := all
			if tc.append {
				withAppend = append(slices.Clone(all), appended)
			}
			want := withAppend[len(all)-int(tc.keep):]
			rotSameRecords(t, ref.records(t), want)
			journaledAt, leasedAt := slices.Index(points, "inplace-journal"), slices.Index(points, "inplace-leased")
			for _, p := range []string{"headcut-collapsed", "headcut-filled", "inplace-cut"} {
				if !slices.Contains(points, p) {
					t.Fatalf("no point %s among %v", p, points)
				}
			}
			if journaledAt < 0 || leasedAt < 0 {
				t.Fatalf("points %v", points)
			}
			t.Logf("points: %v", points)
			for i, p := range points {
				t.Run(p, func(t *testing.T) {
					s, _ := ipFixture(t, mnt, 64<<10, tc.maxFiles, tc.counts, 200)
					fsx.SetCrashHook(hook(s, p, nil))
					_, err := s.backend(t).Compact(context.Background(), opts)
					fsx.SetCrashHook(nil)
					if !errors.Is(err, fsx.ErrSimulatedCrash) {
						t.Fatalf("no simulated crash: %v", err)
					}
					// The writer goes on after the kill, before Recover.
					f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0)
					if err != nil {
						t.Fatal(err)
					}
					f.WriteString(afterKill + "\n")
					f.Close()
					var rpoints []string
					for k := 0; ; k++ {
						seen := 0
						fsx.SetCrashHook(func(rp string) error {
							if !strings.HasPrefix(rp, "recover:") && !strings.HasPrefix(rp, "headcut-") {
								return nil
							}
							seen++
							if seen == k+1 && k < 30 {
								rpoints = append(rpoints, rp)
								return errors.New("killed in recovery at " + rp)
							}
							return nil
						})
						err := s.backend(t).Recover(context.Background())
						fsx.SetCrashHook(nil)
						if err == nil {
							break
						}
						if !errors.Is(err, fsx.ErrSimulatedCrash) {
							t.Fatalf("recover (after crashes at %v): %v", rpoints, err)
						}
					}
					switch {
					case i < leasedAt:
						rotSameRecords(t, s.records(t), append(slices.Clone(all), afterKill))
					case i < journaledAt:
						rotSameRecords(t, s.records(t), append(slices.Clone(withAppend), afterKill))
					default:
						rotSameRecords(t, s.records(t), append(slices.Clone(want), afterKill))
					}
					s.assertClean(t)
					for name := range s.layout(t) {
						if name == filepath.Base(segName(s.path, tc.maxFiles-1)) && tc.counts[tc.maxFiles-1] == 0 {
							t.Errorf("the placeholder %s is left", name)
						}
					}
					if t.Failed() {
						t.Logf("recovery crashed at %v", rpoints)
					}
				})
			}
		})
	}
}

// ipWriter appends numbered records as Papyra's RotatingFilePersistence
// does: before each record, if the active file would pass maxBytes, rotate
// (shift .i → .i+1 from the oldest down, the active file → .1) unless
// <path>.<maxFiles-1> exists; then open in append mode, write the line,
// close. No lock.
type ipWriter struct {
	s         *rotSet
	last      atomic.Int64 // last sequence number written
	rotations atomic.Int64
}

func (w *ipWriter) write(seq int) error {
	s := w.s
	line := ipRec(seq, 120)
	if fi, err := os.Stat(s.path); err == nil && fi.Size()+int64(len(line)) > s.maxBytes {
		if _, err := os.Stat(segName(s.path, s.maxFiles-1)); errors.Is(err, os.ErrNotExist) {
			for i := s.maxFiles - 2; i >= 1; i-- {
				if _, err := os.Stat(segName(s.path, i)); err == nil {
					if err := os.Rename(segName(s.path, i), segName(s.path, i+1)); err != nil {
						return err
					}
				}
			}
			if err := os.Rename(s.path, segName(s.path, 1)); err != nil {
				return err
			}
			w.rotations.Add(1)
		}
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	w.last.Store(int64(seq))
	return f.Close()
}

// ipSeqs returns the sequence numbers of the set's records, oldest first.
func ipSeqs(t *testing.T, s *rotSet) []int64 {
	t.Helper()
	var seqs []int64
	for _, r := range s.records(t) {
		var v struct {
			Payload struct {
				Seq *int64 `json:"seq"`
			} `json:"payload"`
		}
		if err := json.Unmarshal([]byte(r), &v); err != nil || v.Payload.Seq == nil {
			t.Fatalf("not a writer record: %.100q (%v)", r, err)
		}
		seqs = append(seqs, *v.Payload.Seq)
	}
	return seqs
}

// TestRotatingInPlaceLiveWriter: compactions with method auto on ext4 while
// a writer appends and rotates as Papyra does: every record written is in
// the set exactly once and in order, or was dropped by retention as the
// oldest; in place ran (the cut falls in a segment or in the active file).
func TestRotatingInPlaceLiveWriter(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	s, _ := ipFixture(t, mnt, 32<<10, 4, map[int]int{}, 120)
	b := s.backend(t)
	w := &ipWriter{s: s}
	keep := int64(700)
	opts := backends.CompactOptions{Retention: keepRecords(keep), PartialLineGrace: time.Minute}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := 0; ctx.Err() == nil; seq++ {
			if err := w.write(seq); err != nil {
				writeErr = err
				return
			}
			// Papyra does more than write: a writer that fills a segment
			// in less time than a compaction takes keeps the set
			// overgrown (the writer does not rotate during a compaction),
			// which only the copy mends.
			time.Sleep(300 * time.Microsecond)
		}
	}()
	check := func(stage string) {
		t.Helper()
		seqs := ipSeqs(t, s)
		for i := 1; i < len(seqs); i++ {
			if seqs[i] != seqs[i-1]+1 {
				t.Fatalf("%s: record %d has seq %d after %d: a gap, a double or a reordering", stage, i, seqs[i], seqs[i-1])
			}
		}
		if len(seqs) > 0 && seqs[len(seqs)-1] != w.last.Load() {
			t.Fatalf("%s: the newest record is %d, the writer wrote up to %d", stage, seqs[len(seqs)-1], w.last.Load())
		}
	}
	methods := map[string]int{}
	var conflicts, appended int64
	for ok := 0; ok < 60; {
		rep, err := b.Compact(context.Background(), opts)
		if errors.Is(err, backends.ErrConcurrentRotation) {
			conflicts++
			continue
		}
		if err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("compaction %d: %v", ok+1, err)
		}
		ok++
		methods[rep.Method]++
		appended += rep.AppendedDuring
		time.Sleep(10 * time.Millisecond) // let the writer fill and rotate again
	}
	cancel()
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("writer: %v", writeErr)
	}
	t.Logf("%d records written, %d rotations, methods %v, %d concurrent-rotation retries, %d appended during compactions",
		w.last.Load()+1, w.rotations.Load(), methods, conflicts, appended)
	if methods[backends.MethodInPlace] == 0 || w.rotations.Load() == 0 {
		t.Fatalf("in place never ran (methods %v) or the writer never rotated (%d)", methods, w.rotations.Load())
	}
	check("after the live run")
	// A last compaction without the writer: exactly the newest records.
	if _, err := b.Compact(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	check("after the final compaction")
	if n := int64(len(ipSeqs(t, s))); n != keep {
		t.Fatalf("after the final compaction %d records remain, want %d", n, keep)
	}
	s.assertClean(t)
}

// TestRotatingInPlaceFullDisk: a 45 MB set on a 64 MB ext4 filesystem
// filled to its last 0.5 MB, compacted to about half: the copy would need
// 22 MB of free space, in place needs none. The compaction succeeds, keeps
// the newest records byte for byte and frees the space of the dropped
// ones.
func TestRotatingInPlaceFullDisk(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	// .3, .2 and .1 hold 12,000 records of 1,000 bytes, the active file
	// 9,000; the newest 22,000 are kept: .3 goes, .2 loses its head.
	s, all := ipFixture(t, mnt, 12_000_000, 4, map[int]int{3: 12000, 2: 12000, 1: 12000, 0: 9000}, 1000)
	s.state = filepath.Join(mnt, "state") // on the full filesystem too
	testutil.FillDisk(t, mnt, 512<<10)
	free := testutil.Available(t, mnt)
	if free > 1<<20 {
		t.Fatalf("%d bytes still free after filling the disk", free)
	}
	rep, err := s.backend(t).Compact(context.Background(), backends.CompactOptions{Retention: keepRecords(22000)})
	if err != nil {
		t.Fatalf("compaction of a full disk: %v", err)
	}
	if rep.Method != backends.MethodInPlace {
		t.Errorf("method %q (notes %q), want in_place", rep.Method, rep.Notes)
	}
	rotSameRecords(t, s.records(t), all[len(all)-22000:])
	if after := testutil.Available(t, mnt); after < free+20_000_000 {
		t.Errorf("%d bytes free after the compaction, %d before: want 20 MB more at least", after, free)
	}
	s.assertClean(t)
}
