package fsx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// SlotSize is the size of a journal slot: one block, so that writing it
// never needs a new one.
const SlotSize = 4096

// Slot is a small journal written in place into a file whose blocks were
// allocated beforehand, so that writing, rewriting and clearing it needs no
// free space: the journal of an in-place compaction, which is what a full
// disk needs. An empty slot (zeros) holds no journal. The JSON document
// must fit in SlotSize and is written with one write and fdatasync.
type Slot struct {
	f *os.File
}

// OpenSlot opens the slot name in d, creating it (mode 0600) and allocating
// its SlotSize bytes if it does not exist yet; creating it is the only step
// that needs free space.
func (d *Dir) OpenSlot(name string) (*Slot, error) {
	f, fi, err := d.OpenRegular(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if fi.Size() < SlotSize {
		// Zeros written, not just allocated: later writes then change no
		// extent (an unwritten extent's conversion can need a block).
		_, err := f.WriteAt(make([]byte, SlotSize-fi.Size()), fi.Size())
		if err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = d.Sync()
		}
		if err != nil {
			f.Close()
			if fi.Size() == 0 {
				d.Remove(name)
			}
			return nil, fmt.Errorf("allocate the journal slot %s: %w", d.PathOf(name), err)
		}
	}
	return &Slot{f: f}, nil
}

// Write puts v into the slot durably.
func (s *Slot) Write(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.f.Name(), err)
	}
	if len(data)+1 > SlotSize {
		return fmt.Errorf("%s: a journal of %d bytes does not fit a slot of %d", s.f.Name(), len(data), SlotSize)
	}
	buf := make([]byte, SlotSize)
	copy(buf, data)
	buf[len(data)] = '\n'
	if _, err := s.f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write %s: %w", s.f.Name(), err)
	}
	if err := unix.Fdatasync(int(s.f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", s.f.Name(), err)
	}
	return nil
}

// Read decodes the journal in the slot into v; found is false when the
// slot is empty. A slot whose content is not a whole JSON document was
// being written when the process died, before anything it guards was done:
// it counts as empty.
func (s *Slot) Read(v any) (found bool, err error) { return readSlot(s.f, v) }

// ReadSlot reads the slot name in d like Slot.Read, without creating it:
// found is false when it does not exist or is empty.
func (d *Dir) ReadSlot(name string, v any) (found bool, err error) {
	f, _, err := d.OpenRegular(name, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	return readSlot(f, v)
}

func readSlot(f *os.File, v any) (bool, error) {
	buf := make([]byte, SlotSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	buf = bytes.TrimSpace(buf)
	if len(buf) == 0 || json.Unmarshal(buf, v) != nil {
		return false, nil
	}
	return true, nil
}

// Clear empties the slot durably.
func (s *Slot) Clear() error {
	if _, err := s.f.WriteAt(make([]byte, SlotSize), 0); err != nil {
		return fmt.Errorf("clear %s: %w", s.f.Name(), err)
	}
	if err := unix.Fdatasync(int(s.f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", s.f.Name(), err)
	}
	return nil
}

// Close closes the slot's file.
func (s *Slot) Close() error { return s.f.Close() }
