# `watcher compact` every 6 hours as a Nomad periodic batch job: Papyra's
# "compaction from cron" done by the watcher, on every client that holds
# Papyra's data (one job per such client, or a `constraint` to pick it).
#
#   nomad job run deploy/nomad/watcher-compact.nomad.hcl
#   nomad job periodic force watcher-compact     # once, now
#
# Needs, on the client:
# - a host volume named "papyra-data" at Papyra's data directory, in the
#   client config:  host_volume "papyra-data" { path = "/var/lib/papyra" }
#   (the scheduler places the job only on clients that have it);
# - the docker driver and the image built from deploy/container/Containerfile.
#
# Exit 0: every target compacted (or skipped); 1: a target failed; 2: bad
# config. The next period tries again; nothing is restarted in between.
# state_dir (journals and locks) is on the data volume, so a run stopped by
# kill_timeout or a crash is completed or rolled back by the next one.

job "watcher-compact" {
  type        = "batch"
  datacenters = ["*"]

  periodic {
    crons            = ["17 */6 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "compact" {
    count = 1

    volume "papyra-data" {
      type      = "host"
      source    = "papyra-data"
      read_only = false
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "watcher" {
      driver = "docker"
      # Papyra's UID:GID: the watcher renames files in its data directory.
      user = "10001:10001"

      config {
        image           = "ghcr.io/papyra/watcher:latest"
        args            = ["compact", "--config", "/local/config.toml"]
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]
      }

      volume_mount {
        volume      = "papyra-data"
        destination = "/var/lib/papyra"
        read_only   = false
      }

      env {
        # Reports and the Redis lock name the client.
        WATCHER_NODE = "${node.unique.name}"
      }

      # The config (docs/config.md); only [watcher] and the targets matter
      # to a one-shot compaction.
      template {
        destination = "local/config.toml"
        change_mode = "noop"
        data        = <<-EOT
          [watcher]
          # On the data volume: the next run finds the journal of an
          # interrupted one.
          state_dir = "/var/lib/papyra/.watcher"
          http_listen = ""
          log_level = "info"
          log_format = "json"

          [[target]]
          name = "events"
          backend = "json"
          path = "/var/lib/papyra/events.ndjson"
          [target.retention]
          max_records = 100000
          max_age_seconds = 604800
          max_total_bytes = 536870912

          [[target]]
          name = "audit"
          backend = "rotating"
          path = "/var/lib/papyra/audit.log"
          max_bytes = 50000000
          max_files = 5
          [target.retention]
          max_age_seconds = 2592000
          EOT
      }

      # SIGTERM abandons a running compaction safely (the old content stays).
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
