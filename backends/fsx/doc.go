// Package fsx is the crash-safe file machinery the file backends share:
// directory handles (Dir) through which every open, create, link, rename and
// unlink of a compaction is done relative to a directory held open, never
// through a path; temporary names (TempPrefix) and their removal; durable
// writes, renames and removals (fsync of the file and of the directory);
// state-directory journals (StateName, Dir.WriteJSON, Dir.ReadJSON) and
// locks (Dir.TryLock); write leases that tell when a writer still holds a
// file open (TakeLease, TakeLeaseRetry, LeaseWanted, WritersGone,
// OpenForWriting); removing a file's head in place (Collapse, CollapseBlock:
// fallocate's FALLOC_FL_COLLAPSE_RANGE); refusing a file with more than one
// link (RefuseLinked); and inode identity (InodeOf, SameInode).
//
// It also holds the one crash-injection mechanism of the watcher's tests:
// every kind marks the points of its compaction and recovery with
// CrashPoint, and a test installs a hook with SetCrashHook to stop there as
// if the process had been killed (ErrSimulatedCrash).
package fsx
