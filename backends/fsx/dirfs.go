package fsx

// Directory handles: every file operation of a compaction is done relative
// to a directory held open for the whole compaction, never through a path
// name, so that a directory renamed away and replaced (by a symbolic link to
// somewhere else, say) during a compaction cannot redirect a single open,
// create, link, rename or unlink.
//
// Why not os.Root: a Root keeps every operation beneath its directory, but it
// follows symbolic links that stay beneath it, even for OpenFile with
// O_NOFOLLOW and for OpenRoot, and os.OpenRoot follows a link in the
// directory's own name. A target file must never be opened through a link
// (nor a directory opened through one, unless follow_symlinks says so), so
// Dir uses the *at system calls itself. Every name it is given is a
// single path component: it never walks a path.
//
// Files are opened O_NONBLOCK|O_NOFOLLOW, checked with fstat on the
// descriptor to be regular files, and only then switched back to blocking
// I/O: a FIFO, a socket or a device at a target's name is refused at once
// (ErrNotRegular) instead of blocking the open forever.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/papyra/watcher/backends"
)

// Dir is an open directory. Its methods take names of entries in the
// directory (single path components) and work relative to the open
// directory, wherever it has been moved since it was opened. Errors name the
// full path (the directory's path as opened, joined with the entry's name).
// A Dir is safe for concurrent use.
type Dir struct {
	f    *os.File
	Path string
}

// OpenDir opens the directory at path. Unless follow is set, path's last
// component must not be a symbolic link (ErrSymlink); the components before
// it are resolved as usual. A missing directory is an error wrapping
// fs.ErrNotExist.
func OpenDir(path string, follow bool) (*Dir, error) {
	flag := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	if !follow {
		flag |= unix.O_NOFOLLOW
	}
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Open(path, flag, 0)
		return err
	})
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			var st unix.Stat_t
			serr := unix.Lstat(path, &st)
			if follow {
				serr = unix.Stat(path, &st)
			}
			if serr == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return nil, typeError(path, st.Mode, "a directory")
			}
		}
		return nil, fmt.Errorf("open directory %s: %w", path, err)
	}
	return &Dir{f: os.NewFile(uintptr(fd), path), Path: path}, nil
}

// OpenStateDir creates the state directory at path if it is missing (mode
// 0700, parents included) and opens it. The state directory is the
// operator's configuration, not a target: a symbolic link there is followed.
func OpenStateDir(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory %s: %w", path, err)
	}
	return OpenDir(path, true)
}

// Close closes the directory. The handle must not be used afterwards.
func (d *Dir) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("close directory %s: %w", d.Path, err)
	}
	return nil
}

// Info describes the open directory itself (fstat of its descriptor):
// wherever it has been moved, it is the directory that was opened.
func (d *Dir) Info() (os.FileInfo, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat directory %s: %w", d.Path, err)
	}
	return fi, nil
}

// PathOf returns the path of the entry name, for messages.
func (d *Dir) PathOf(name string) string { return filepath.Join(d.Path, name) }

// withFD calls fn with the directory's descriptor, kept open meanwhile. It
// checks that name is a single path component first.
func (d *Dir) withFD(name string, fn func(dirfd int) error) error {
	if err := CheckEntryName(name); err != nil {
		return fmt.Errorf("%s: %w", d.Path, err)
	}
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("directory %s: %w", d.Path, err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return fmt.Errorf("directory %s: %w", d.Path, err)
	}
	return ferr
}

// CheckEntryName refuses a name that is not a single path component.
func CheckEntryName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("invalid entry name %q: not a single path component", name)
	}
	return nil
}

// ignoringEINTR calls fn until it fails with something other than EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// describeType names a file type (the S_IFMT bits of a stat mode).
func describeType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO (named pipe)"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of unknown type %#o", mode&unix.S_IFMT)
}

// typeError is the error for path being of the file type in mode where want
// ("a regular file", "a directory") was expected: ErrSymlink for a link;
// otherwise ErrNotRegular where a regular file was wanted, ENOTDIR where a
// directory was.
func typeError(path string, mode uint32, want string) error {
	if mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s: %w", path, backends.ErrSymlink)
	}
	var sentinel error = backends.ErrNotRegular
	if want == "a directory" {
		sentinel = unix.ENOTDIR
	}
	return fmt.Errorf("%s is %s: %w", path, describeType(mode), sentinel)
}

// RequireRegular returns nil when fi (of the file at path) describes a
// regular file, and the error typeError gives otherwise.
func RequireRegular(path string, fi os.FileInfo) error {
	if fi.Mode().IsRegular() {
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return typeError(path, st.Mode, "a regular file")
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link, not a regular file: %w", path, backends.ErrSymlink)
	}
	return fmt.Errorf("%s is not a regular file (%s): %w", path, fi.Mode(), backends.ErrNotRegular)
}

// openRegularHook, when set (tests only), is called by OpenRegular between
// its check of the name and the open, with the file's path.
var openRegularHook func(path string)

// OpenRegular opens the regular file name with flag (os.O_RDONLY,
// os.O_RDWR|os.O_APPEND, os.O_CREATE with perm, ...). It never follows a
// symbolic link (ErrSymlink) and never blocks: the open is O_NONBLOCK, the
// descriptor is checked with fstat to be a regular file (a FIFO, a socket, a
// device or a directory is refused with ErrNotRegular, naming what it is),
// and only then is O_NONBLOCK cleared for ordinary I/O. It returns the file
// and its FileInfo (from fstat of the descriptor). A missing file (without
// os.O_CREATE) is an error wrapping fs.ErrNotExist.
func (d *Dir) OpenRegular(name string, flag int, perm os.FileMode) (*os.File, os.FileInfo, error) {
	p := d.PathOf(name)
	var fd int
	err := d.withFD(name, func(dirfd int) error {
		if flag&(os.O_CREATE|os.O_EXCL) != os.O_CREATE|os.O_EXCL {
			// Refuse what can be refused without opening it: opening a
			// device can have effects of its own.
			var st unix.Stat_t
			err := ignoringEINTR(func() error { return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) })
			switch {
			case err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG:
				return typeError(p, st.Mode, "a regular file")
			case errors.Is(err, unix.ENOENT) && flag&os.O_CREATE != 0:
			case err != nil:
				return fmt.Errorf("open %s: %w", p, err)
			}
		}
		if openRegularHook != nil {
			openRegularHook(p)
		}
		err := ignoringEINTR(func() (err error) {
			fd, err = unix.Openat(dirfd, name, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, uint32(perm.Perm()))
			return err
		})
		if err != nil {
			// The name changed type since the check above (or it is a FIFO
			// without a reader, ENXIO): say what it is now.
			var st unix.Stat_t
			if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EEXIST) &&
				unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				return typeError(p, st.Mode, "a regular file")
			}
			return fmt.Errorf("open %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var st unix.Stat_t
	if err := ignoringEINTR(func() error { return unix.Fstat(fd, &st) }); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("stat %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, nil, typeError(p, st.Mode, "a regular file")
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("clear O_NONBLOCK on %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("stat %s: %w", p, err)
	}
	return f, fi, nil
}

// Create creates the new regular file name, empty, read-write, with O_EXCL
// (never through an existing name or link: an existing name is an error
// wrapping fs.ErrExist), with the mode and owner of like when like is not nil
// (mode 0644 otherwise). The owner is left as it is when the process may not
// change it.
func (d *Dir) Create(name string, like os.FileInfo) (*os.File, error) {
	mode := os.FileMode(0o644)
	if like != nil {
		mode = like.Mode().Perm()
	}
	f, _, err := d.OpenRegular(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return nil, err
	}
	if like != nil {
		// umask may have narrowed the mode; set it exactly.
		if err := f.Chmod(mode); err != nil {
			d.discard(f, name)
			return nil, fmt.Errorf("set mode of %s: %w", f.Name(), err)
		}
		if st, ok := like.Sys().(*syscall.Stat_t); ok {
			if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil && !os.IsPermission(err) {
				d.discard(f, name)
				return nil, fmt.Errorf("set owner of %s: %w", f.Name(), err)
			}
		}
	}
	return f, nil
}

// CreateTemp creates a new temporary file for the file base (named
// TempPrefix(base) and a random suffix, so that RemoveTemps recognises it),
// as Create does. It returns the file and its name in d.
func (d *Dir) CreateTemp(base string, like os.FileInfo) (*os.File, string, error) {
	for range 10 {
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, "", err
		}
		name := TempPrefix(base) + hex.EncodeToString(rnd[:])
		f, err := d.Create(name, like)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("create temporary file in %s: %w", d.Path, err)
		}
		return f, name, nil
	}
	return nil, "", fmt.Errorf("create temporary file in %s: too many name collisions", d.Path)
}

// discard closes f and removes name, for cleaning up a file just created on
// an error path.
func (d *Dir) discard(f *os.File, name string) {
	f.Close()
	d.Remove(name)
}

// OpenSubdir opens the subdirectory name; a symbolic link there is refused
// (ErrSymlink), as is anything but a directory (an error wrapping
// syscall.ENOTDIR).
func (d *Dir) OpenSubdir(name string) (*Dir, error) {
	p := d.PathOf(name)
	var fd int
	err := d.withFD(name, func(dirfd int) error {
		err := ignoringEINTR(func() (err error) {
			fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			return err
		})
		if err != nil {
			var st unix.Stat_t
			if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
				if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
					return typeError(p, st.Mode, "a directory")
				}
			}
			return fmt.Errorf("open directory %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Dir{f: os.NewFile(uintptr(fd), p), Path: p}, nil
}

// Mkdir creates the subdirectory name with perm (before umask).
func (d *Dir) Mkdir(name string, perm os.FileMode) error {
	return d.withFD(name, func(dirfd int) error {
		if err := ignoringEINTR(func() error { return unix.Mkdirat(dirfd, name, uint32(perm.Perm())) }); err != nil {
			return fmt.Errorf("create directory %s: %w", d.PathOf(name), err)
		}
		return nil
	})
}

// mkdirTemp creates a new subdirectory named prefix and a random suffix,
// mode 0700, and opens it. It returns the open subdirectory and its name.
func (d *Dir) mkdirTemp(prefix string) (*Dir, string, error) {
	for range 10 {
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, "", err
		}
		name := prefix + hex.EncodeToString(rnd[:])
		err := d.Mkdir(name, 0o700)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		sub, err := d.OpenSubdir(name)
		if err != nil {
			d.RemoveAll(name)
			return nil, "", err
		}
		return sub, name, nil
	}
	return nil, "", fmt.Errorf("create directory in %s: too many name collisions", d.Path)
}

// Rename renames oldName to newName, both in d (replacing newName).
func (d *Dir) Rename(oldName, newName string) error {
	return d.RenameTo(oldName, d, newName)
}

// RenameTo moves oldName of d to newName of dst (replacing it); d and dst
// must be on one filesystem.
func (d *Dir) RenameTo(oldName string, dst *Dir, newName string) error {
	return d.withFD(oldName, func(oldfd int) error {
		return dst.withFD(newName, func(newfd int) error {
			if err := ignoringEINTR(func() error { return unix.Renameat(oldfd, oldName, newfd, newName) }); err != nil {
				return fmt.Errorf("rename %s to %s: %w", d.PathOf(oldName), dst.PathOf(newName), err)
			}
			return nil
		})
	})
}

// Link makes newName a hard link to oldName, both in d. A symbolic link
// oldName is linked itself, never followed.
func (d *Dir) Link(oldName, newName string) error {
	return d.LinkTo(oldName, d, newName)
}

// LinkTo makes newName of dst a hard link to oldName of d (never following
// a symbolic link oldName); an existing newName is an error wrapping
// fs.ErrExist.
func (d *Dir) LinkTo(oldName string, dst *Dir, newName string) error {
	return d.withFD(oldName, func(oldfd int) error {
		return dst.withFD(newName, func(newfd int) error {
			if err := ignoringEINTR(func() error { return unix.Linkat(oldfd, oldName, newfd, newName, 0) }); err != nil {
				return fmt.Errorf("link %s to %s: %w", d.PathOf(oldName), dst.PathOf(newName), err)
			}
			return nil
		})
	})
}

// Remove removes the entry name, a file (of any type) or an empty
// directory. A missing name is an error wrapping fs.ErrNotExist.
func (d *Dir) Remove(name string) error {
	return d.withFD(name, func(dirfd int) error {
		err := ignoringEINTR(func() error { return unix.Unlinkat(dirfd, name, 0) })
		if errors.Is(err, unix.EISDIR) {
			err = ignoringEINTR(func() error { return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR) })
		}
		if err != nil {
			return fmt.Errorf("remove %s: %w", d.PathOf(name), err)
		}
		return nil
	})
}

// RemoveAll removes name and, when it is a directory, everything in it,
// without following any symbolic link. A missing name is fine.
func (d *Dir) RemoveAll(name string) error {
	return d.removeAllDepth(name, 0)
}

// maxRemoveDepth bounds the recursion of RemoveAll.
const maxRemoveDepth = 64

func (d *Dir) removeAllDepth(name string, depth int) error {
	fi, err := d.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if depth >= maxRemoveDepth {
			return fmt.Errorf("remove %s: directories nested deeper than %d", d.PathOf(name), maxRemoveDepth)
		}
		sub, err := d.OpenSubdir(name)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if sub != nil {
			entries, err := sub.ReadDir()
			for _, e := range entries {
				if err == nil {
					err = sub.removeAllDepth(e.Name(), depth+1)
				}
			}
			sub.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := d.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Lstat describes the entry name itself (a symbolic link is not followed).
// The FileInfo is the os package's, from fstat of an O_PATH descriptor, so
// os.SameFile compares it with the FileInfo of an open file. A missing name
// is an error wrapping fs.ErrNotExist.
func (d *Dir) Lstat(name string) (os.FileInfo, error) {
	return d.statFlags(name, unix.O_NOFOLLOW)
}

// Stat describes the file name refers to, following a symbolic link
// wherever it points (outside d too): for reports only, never for deciding
// what to open.
func (d *Dir) Stat(name string) (os.FileInfo, error) {
	return d.statFlags(name, 0)
}

func (d *Dir) statFlags(name string, flag int) (os.FileInfo, error) {
	p := d.PathOf(name)
	var fd int
	err := d.withFD(name, func(dirfd int) error {
		err := ignoringEINTR(func() (err error) {
			fd, err = unix.Openat(dirfd, name, unix.O_PATH|unix.O_CLOEXEC|flag, 0)
			return err
		})
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", p, err)
	}
	return fi, nil
}

// ReadDir lists the directory, sorted by name. Each entry's type and Info
// come from Lstat relative to d, never from a path; an entry removed while
// listing is left out.
func (d *Dir) ReadDir() ([]fs.DirEntry, error) {
	var fd int
	rc, err := d.f.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(dirfd uintptr) {
			err = ignoringEINTR(func() (err error) {
				fd, err = unix.Openat(int(dirfd), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				return err
			})
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.Path, err)
	}
	f := os.NewFile(uintptr(fd), d.Path)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.Path, err)
	}
	slices.Sort(names)
	entries := make([]fs.DirEntry, 0, len(names))
	for _, n := range names {
		fi, err := d.Lstat(n)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", d.Path, err)
		}
		entries = append(entries, fs.FileInfoToDirEntry(fi))
	}
	return entries, nil
}

// Sync fsyncs the directory, making the creations, links, renames and
// removals in it durable.
func (d *Dir) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", d.Path, err)
	}
	return nil
}

// Chmod sets the mode of the directory itself (fchmod of the held
// descriptor, wherever the directory has been moved).
func (d *Dir) Chmod(mode os.FileMode) error {
	if err := d.f.Chmod(mode); err != nil {
		return fmt.Errorf("set mode of directory %s: %w", d.Path, err)
	}
	return nil
}

// RemoveTemps removes the temporary files (CreateTemp) for the file base in
// d that a crashed operation left. It removes nothing else.
func (d *Dir) RemoveTemps(base string) error {
	entries, err := d.ReadDir()
	if err != nil {
		return err
	}
	prefix := TempPrefix(base)
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), prefix) {
			if err := d.Remove(e.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove leftover: %w", err)
			}
		}
	}
	return nil
}

// WriteFileReplace replaces name with data through a temporary file and a
// rename; with durable it fsyncs the file and the directory too. Without,
// the new content survives the process being killed but not necessarily a
// power loss.
func (d *Dir) WriteFileReplace(name string, data []byte, durable bool) error {
	if err := CheckEntryName(name); err != nil {
		return fmt.Errorf("%s: %w", d.Path, err)
	}
	f, tmp, err := d.CreateTemp(name, nil)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		d.discard(f, tmp)
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if durable {
		if err := f.Sync(); err != nil {
			d.discard(f, tmp)
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
	}
	if err := f.Close(); err != nil {
		d.Remove(tmp)
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := d.Rename(tmp, name); err != nil {
		d.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	return d.Sync()
}

// WriteJSON replaces name with v as indented JSON, durably
// (WriteFileReplace).
func (d *Dir) WriteJSON(name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", d.PathOf(name), err)
	}
	return d.WriteFileReplace(name, append(data, '\n'), true)
}

// maxJSONFile bounds what ReadJSON reads: state files are small.
const maxJSONFile = 64 << 20

// ReadJSON decodes the regular file name into v. It reports found=false
// when name does not exist.
func (d *Dir) ReadJSON(name string, v any) (found bool, err error) {
	f, _, err := d.OpenRegular(name, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJSONFile+1))
	if err != nil {
		return false, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	if len(data) > maxJSONFile {
		return true, fmt.Errorf("read %s: larger than %d bytes", f.Name(), maxJSONFile)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return true, fmt.Errorf("decode %s: %w", f.Name(), err)
	}
	return true, nil
}

// RemoveDurably removes name (missing is fine) and fsyncs d.
func (d *Dir) RemoveDurably(name string) error {
	if err := d.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return d.Sync()
}

// TryLock takes the exclusive advisory lock (flock) on the regular file name,
// created (mode 0600) if missing, without waiting; it returns an error
// wrapping ErrBusy when someone else holds it.
func (d *Dir) TryLock(name string) (*fileLock, error) {
	f, _, err := d.OpenRegular(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", f.Name(), backends.ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return &fileLock{f: f}, nil
}
