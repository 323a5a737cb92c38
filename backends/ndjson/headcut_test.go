package ndjson

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/internal/testutil"
	"golang.org/x/sys/unix"
)

// headCutFile writes n numbered record lines to dir/f.ndjson and returns
// the path, the content and each line's start offset.
func headCutFile(t *testing.T, dir string, n int) (string, []byte, []int64) {
	t.Helper()
	var buf bytes.Buffer
	var starts []int64
	for i := range n {
		starts = append(starts, int64(buf.Len()))
		fmt.Fprintf(&buf, `{"kind":"event","timestamp":%d.0,"n":%d,"pad":"%s"}`+"\n", 1795599000+i, i, bytes.Repeat([]byte{'x'}, i%97))
	}
	path := filepath.Join(dir, "f.ndjson")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, buf.Bytes(), starts
}

// wantHead checks that the file is a filler line followed by exactly
// kept.
func wantHead(t *testing.T, path string, kept []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(got, kept) {
		t.Fatalf("the file does not end with the kept lines (%d bytes, want a suffix of %d)", len(got), len(kept))
	}
	head := got[:len(got)-len(kept)]
	if len(head) > 0 && !IsFiller(head) {
		t.Fatalf("the head before the kept lines is not one filler line: %q", head[:min(len(head), 80)])
	}
}

func TestHeadCutExt4(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	for _, k := range []int{1, 7, 500, 9999} {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			dir, err := os.MkdirTemp(mnt, "hc")
			if err != nil {
				t.Fatal(err)
			}
			path, data, starts := headCutFile(t, dir, 10000)
			cut := starts[k]
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fiBefore, _ := f.Stat()
			h, err := PlanHeadCut(f, cut)
			if err != nil {
				t.Fatal(err)
			}
			block, err := fsx.CollapseBlock(f)
			if err != nil {
				t.Fatal(err)
			}
			if h.Collapse%block != 0 || h.Filler() < MinFiller || h.Filler() >= block+MinFiller || h.Collapse > cut {
				t.Fatalf("bad plan %+v", h)
			}
			if err := h.Apply(f); err != nil {
				t.Fatal(err)
			}
			wantHead(t, path, data[cut:])
			fi, _ := os.Stat(path)
			if !fsx.SameInode(fi, fiBefore) {
				t.Fatal("the inode changed")
			}
			if fi.Size() != int64(len(data))-h.Collapse {
				t.Fatalf("size %d, want %d", fi.Size(), int64(len(data))-h.Collapse)
			}
		})
	}
}

func TestHeadCutNoCollapseOnTmpfs(t *testing.T) {
	mnt := testutil.MountTmpfs(t, 8)
	path, data, starts := headCutFile(t, mnt, 5000)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := PlanHeadCut(f, starts[4000])
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Apply(f); !errors.Is(err, fsx.ErrNoCollapse) {
		t.Fatalf("Apply on tmpfs: %v, want ErrNoCollapse", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("the file changed")
	}
}

// TestHeadCutCrashRepair: a crash at every point of Apply, then Repair,
// leaves the kept lines, whole, after at most one filler line; lines
// appended after the crash stay after them.
func TestHeadCutCrashRepair(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	for _, point := range []string{"headcut-planned", "headcut-collapsed", "headcut-filled"} {
		t.Run(point, func(t *testing.T) {
			dir, err := os.MkdirTemp(mnt, "hc")
			if err != nil {
				t.Fatal(err)
			}
			path, data, starts := headCutFile(t, dir, 10000)
			cut := starts[6000]
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			h, err := PlanHeadCut(f, cut)
			if err != nil {
				t.Fatal(err)
			}
			restore := fsx.SetCrashHook(func(p string) error {
				if p == point {
					return errors.New("kill")
				}
				return nil
			})
			err = h.Apply(f)
			restore()
			if !errors.Is(err, fsx.ErrSimulatedCrash) {
				t.Fatalf("Apply: %v, want the simulated crash", err)
			}
			more := []byte(`{"kind":"event","timestamp":1795700000.0,"n":"after"}` + "\n")
			a, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			a.Write(more)
			a.Close()
			state, err := h.Repair(f)
			if err != nil {
				t.Fatal(err)
			}
			kept := append(append([]byte{}, data[cut:]...), more...)
			if point == "headcut-planned" {
				if state != HeadUntouched {
					t.Fatalf("state %v, want untouched", state)
				}
				if got, _ := os.ReadFile(path); !bytes.Equal(got, append(append([]byte{}, data...), more...)) {
					t.Fatal("an untouched file was changed")
				}
				return
			}
			if state != HeadRepaired {
				t.Fatalf("state %v, want repaired", state)
			}
			wantHead(t, path, kept)
		})
	}
}

// TestHeadCutTornRepair: a torn collapse (the head holds zeros and a
// partial line before the first kept line) is repaired into one filler
// line; a head where the first kept line is not to be found is left alone
// with ErrTornHead.
func TestHeadCutTornRepair(t *testing.T) {
	dir := t.TempDir()
	path, data, starts := headCutFile(t, dir, 3000)
	cut := starts[2000]
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A plan as ext4 would make it (block 4096), whatever this filesystem is.
	h := HeadCut{Cut: cut, Collapse: cut / 4096 * 4096, Size: int64(len(data)), Mark: append([]byte{}, data[cut:cut+64]...)}
	if h.Filler() < MinFiller {
		h.Collapse -= 4096
	}
	fi, _ := f.Stat()
	h.Dev, h.Ino = fsx.InodeOf(fi)
	// Torn: zeros, then a partial line, then the kept lines, 100 bytes
	// later than the plan said.
	torn := append(append(make([]byte, 50), []byte(`mp":1795599999.0}`+"\n")...), make([]byte, 0)...)
	torn = append(torn, bytes.Repeat([]byte{'y'}, int(h.Filler())+100-len(torn)-1)...)
	torn = append(torn, '\n')
	torn = append(torn, data[cut:]...)
	if err := os.WriteFile(path, torn, 0o644); err != nil {
		t.Fatal(err)
	}
	state, err := h.Repair(f)
	if err != nil || state != HeadRepaired {
		t.Fatalf("Repair of a torn head: %v, %v", state, err)
	}
	wantHead(t, path, data[cut:])

	// The mark is nowhere: nothing is touched.
	garbage := append(bytes.Repeat([]byte{0}, 10000), '\n')
	if err := os.WriteFile(path, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Repair(f); !errors.Is(err, ErrTornHead) {
		t.Fatalf("Repair without the mark: %v, want ErrTornHead", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, garbage) {
		t.Fatal("Repair changed a file it could not make sense of")
	}
}

// TestEstimateWhileLeased: while an in-place compaction holds its write
// lease, an estimate of the file says busy (the retention trigger keeps its
// last estimate) instead of failing or waiting.
func TestEstimateWhileLeased(t *testing.T) {
	path, _, _ := headCutFile(t, t.TempDir(), 100)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !fsx.TakeLease(f) {
		t.Fatal("no write lease on a file nobody else has open")
	}
	defer fsx.ReleaseLease(f)
	e := NewFileEstimator(func(context.Context) ([]string, error) { return []string{path}, nil }, false)
	_, err = e.Estimate(context.Background(), time.Now(), backends.Retention{})
	if !errors.Is(err, backends.ErrBusy) {
		t.Fatalf("estimate of a leased file: %v, want ErrBusy", err)
	}
}

// TestHeadCutPowerLossStates: a power loss can cut a large collapse short
// (ext4 and XFS commit it in several transactions: the head punched out,
// then the kept extents shifted down one by one, the size last). Repair
// finishes both states such a collapse can leave on ext4: the head punched
// and nothing shifted; some kept extents shifted and a hole of Collapse
// bytes before the others. Either way the file ends as Apply would have
// left it: one filler line, then exactly the kept lines, Collapse bytes
// shorter. Without the repair, the second state kept a run of zeros inside
// a kept record (which the next compaction dropped with its record).
func TestHeadCutPowerLossStates(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	for _, shifted := range []int64{0, 2, 5} { // kept blocks shifted before the power went
		t.Run(fmt.Sprintf("shifted_%d_blocks", shifted), func(t *testing.T) {
			dir, err := os.MkdirTemp(mnt, "pl")
			if err != nil {
				t.Fatal(err)
			}
			path, data, starts := headCutFile(t, dir, 10000)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cut := starts[3000]
			h, err := PlanHeadCut(f, cut)
			if err != nil {
				t.Fatal(err)
			}
			block, _ := fsx.CollapseBlock(f)
			c := h.Collapse
			if c < 2*block {
				t.Fatalf("plan %+v: want a collapse of several blocks", h)
			}
			// The state the power loss left, built on the same inode:
			// the head a hole; the first shifted*block kept bytes moved
			// down by c; a hole of c bytes; the rest where it was.
			m := shifted * block
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(len(data))); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(data[c:c+m], 0); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(data[c+m:], c+m); err != nil {
				t.Fatal(err)
			}
			if fi, _ := f.Stat(); fi.Size() != int64(len(data)) {
				t.Fatalf("size %d, want %d unchanged", fi.Size(), len(data))
			}
			state, err := h.Repair(f)
			if err != nil || state != HeadRepaired {
				t.Fatalf("Repair: %v, %v; want HeadRepaired", state, err)
			}
			wantHead(t, path, data[cut:])
			if fi, _ := f.Stat(); fi.Size() != int64(len(data))-c {
				t.Fatalf("size %d after the repair, want %d", fi.Size(), int64(len(data))-c)
			}
			got, _ := os.ReadFile(path)
			if bytes.IndexByte(got, 0) >= 0 {
				t.Fatal("a zero byte is left in the file")
			}
			// Repair again (a crash during the repair): nothing changes.
			if state, err := h.Repair(f); err != nil || state != HeadRepaired {
				t.Fatalf("second Repair: %v, %v", state, err)
			}
			if again, _ := os.ReadFile(path); !bytes.Equal(again, got) {
				t.Fatal("a second Repair changed the file")
			}
		})
	}
}

// TestHeadCutNeverStartsInsideACharacter: between the collapse and the
// filler write, the file starts with the byte at Collapse. When a block
// boundary falls inside a multibyte UTF-8 character, the plan collapses a
// block less, so that the head then starts on a character (Papyra reads
// strict UTF-8: a head starting inside a character fails its whole read).
func TestHeadCutNeverStartsInsideACharacter(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	f0, err := os.CreateTemp(mnt, "probe")
	if err != nil {
		t.Fatal(err)
	}
	block, err := fsx.CollapseBlock(f0)
	f0.Close()
	if err != nil {
		t.Fatal(err)
	}
	// ASCII lines up to shortly before 3 blocks, then one line whose run
	// of "é" (2 bytes each) straddles the boundary at 3*block with the
	// boundary on the second byte of one; the cut is after that line.
	var buf bytes.Buffer
	for int64(buf.Len()) < 3*block-400 {
		fmt.Fprintf(&buf, `{"kind":"event","timestamp":1795599000.0,"p":"%s"}`+"\n", strings.Repeat("x", 80))
	}
	const prefix = `{"kind":"event","timestamp":1795599000.0,"p":"`
	pad := 1
	if (3*block-int64(buf.Len()+len(`{"q":"x"}`+"\n")+len(prefix)))%2 == 0 {
		pad = 2
	}
	fmt.Fprintf(&buf, `{"q":"%s"}`+"\n", strings.Repeat("x", pad))
	buf.WriteString(prefix + strings.Repeat("é", 300) + `"}` + "\n")
	cut := int64(buf.Len())
	for range 200 {
		fmt.Fprintf(&buf, `{"kind":"event","timestamp":1795599001.0,"p":"%s"}`+"\n", strings.Repeat("é", 10))
	}
	data := buf.Bytes()
	if !utf8Continuation(data[3*block]) {
		t.Fatalf("the test file does not put a continuation byte at %d: %q", 3*block, data[3*block-2:3*block+2])
	}
	path := filepath.Join(mnt, "utf8.ndjson")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := PlanHeadCut(f, cut)
	if err != nil {
		t.Fatal(err)
	}
	if h.Collapse%block != 0 || utf8Continuation(data[h.Collapse]) || h.Collapse > cut-MinFiller {
		t.Fatalf("plan %+v: the head after the collapse would start with %#x", h, data[h.Collapse])
	}
	if h.Collapse != 2*block {
		t.Fatalf("collapse %d, want %d: one block less than the boundary inside a character", h.Collapse, 2*block)
	}
	if !utf8.Valid(data[h.Collapse:]) {
		t.Fatal("the head after the collapse is not valid UTF-8")
	}
	if err := h.Apply(f); err != nil {
		t.Fatal(err)
	}
	wantHead(t, path, data[cut:])
}
