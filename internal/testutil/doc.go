// Package testutil holds helpers shared by the watcher's tests: private
// redis-server and nats-server processes on free ports (StartRedis,
// StartNATS), the shared Redis on 127.0.0.1:6379 and NATS on 127.0.0.1:4222
// (SharedRedis, SharedNATS), unique key prefixes so that tests never collide
// (UniquePrefix, DeletePrefix), filesystems of a known kind and size mounted
// for one test (MountExt4, MountTmpfs) and filled to a known free space
// (FillDisk, Available), FIFOs (Mkfifo, UnblockFIFO), and a bound on how
// long a call may block (Within).
//
// A helper whose binary (redis-server, mkfs.ext4, ...) or root is missing
// skips its test, unless the environment variable CI is set: then it fails.
package testutil
