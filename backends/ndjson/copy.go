package ndjson

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Copier writes a new file from pieces of a source file and from bytes in
// memory, sequentially, with large writes and copy_file_range for long runs.
// It calls waitIO before writing and progress after.
type Copier struct {
	ctx      context.Context
	Src, Dst *os.File
	DstOff   int64 // bytes written to dst so far (buffered ones included)
	buf      []byte
	n        int // buffered bytes in buf[:n]
	waitIO   func(ctx context.Context, n int) error
	progress func(n int64)
	noCFR    bool // copy_file_range unavailable between these files
}

// NewCopier returns a Copier from src to dst (either may be set later
// through Src and Dst), writing at DstOff, with a buffer of bufSize bytes.
// waitIO, when not nil, is called with the byte count before each write (the
// IO throttle), progress, when not nil, with the count after it; once ctx is
// done, every write fails with its error.
func NewCopier(ctx context.Context, src, dst *os.File, bufSize int, waitIO func(context.Context, int) error, progress func(int64)) *Copier {
	return &Copier{ctx: ctx, Src: src, Dst: dst, buf: make([]byte, bufSize), waitIO: waitIO, progress: progress}
}

func (c *Copier) wait(n int) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if c.waitIO != nil {
		return c.waitIO(c.ctx, n)
	}
	return nil
}

// Flush writes the buffered bytes to Dst.
func (c *Copier) Flush() error {
	if c.n == 0 {
		return nil
	}
	if err := c.wait(c.n); err != nil {
		return err
	}
	if _, err := c.Dst.WriteAt(c.buf[:c.n], c.DstOff-int64(c.n)); err != nil {
		return fmt.Errorf("write %s: %w", c.Dst.Name(), err)
	}
	if c.progress != nil {
		c.progress(int64(c.n))
	}
	c.n = 0
	return nil
}

// Write appends p. A long line that a line reader mapped from the source
// is copied by range instead, without reading its pages into memory.
func (c *Copier) Write(p []byte) error {
	if l := longLineOf(p); l != nil && c.Src != nil && len(p) == len(l.line) && l.src == io.ReaderAt(c.Src) {
		return c.CopyRange(l.off, int64(len(p)))
	}
	for len(p) > 0 {
		if c.n == len(c.buf) {
			if err := c.Flush(); err != nil {
				return err
			}
		}
		k := copy(c.buf[c.n:], p)
		c.n += k
		c.DstOff += int64(k)
		p = p[k:]
	}
	return nil
}

// CopyRange appends src[off, off+n).
func (c *Copier) CopyRange(off, n int64) error {
	if n >= DirectCopyMin && !c.noCFR {
		if err := c.Flush(); err != nil {
			return err
		}
		done, err := c.copyFileRange(off, n)
		if err != nil {
			return err
		}
		off, n = off+done, n-done
	}
	for n > 0 {
		if c.n == len(c.buf) {
			if err := c.Flush(); err != nil {
				return err
			}
		}
		k := min(int64(len(c.buf)-c.n), n)
		m, err := c.Src.ReadAt(c.buf[c.n:c.n+int(k)], off)
		if int64(m) < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read %s at %d: %w", c.Src.Name(), off, err)
		}
		c.n += m
		c.DstOff += k
		off += k
		n -= k
	}
	return nil
}

// copyFileRange copies with copy_file_range(2) and reports how much it
// copied; on a filesystem that cannot, it copies nothing and sets noCFR.
func (c *Copier) copyFileRange(off, n int64) (int64, error) {
	var done int64
	for done < n {
		k := min(int64(copyChunk), n-done)
		if err := c.wait(int(k)); err != nil {
			return done, err
		}
		roff, woff := off+done, c.DstOff
		m, err := unix.CopyFileRange(int(c.Src.Fd()), &roff, int(c.Dst.Fd()), &woff, int(k), 0)
		if err != nil {
			if done == 0 && (errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.ENOSYS) ||
				errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EPERM)) {
				c.noCFR = true
				return 0, nil
			}
			return done, fmt.Errorf("copy %s to %s: %w", c.Src.Name(), c.Dst.Name(), err)
		}
		if m == 0 {
			return done, fmt.Errorf("copy %s at %d: %w", c.Src.Name(), roff, io.ErrUnexpectedEOF)
		}
		done += int64(m)
		c.DstOff += int64(m)
		if c.progress != nil {
			c.progress(int64(m))
		}
	}
	return done, nil
}

// copyChunk is the most bytes one copy_file_range call (and one WaitIO
// request) moves.
var copyChunk = 8 << 20

// DirectCopyMin is the shortest run copied with copy_file_range; shorter
// runs go through the Copier's buffer.
var DirectCopyMin = int64(256 << 10)
