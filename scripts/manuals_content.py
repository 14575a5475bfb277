"""The text of the test manuals in tests/data/manuals/: a fictional USB data logger ("tidelog"), its
daemon `tideld`, command-line tool `tidectl` and HTTP API. Each manual is a list of blocks that
scripts/build_test_corpus.py renders as HTML, PDF or .docx. Inline `code` is marked with backticks."""

from __future__ import annotations

# Blocks: ("h", level, title) · ("p", text) · ("ul", [items]) · ("code", text) · ("dl", [(term, text)])
# · ("table", [[cells], ...]) — the first table row is the header.
Block = tuple

INSTALLATION: list[Block] = [
    ("h", 1, "Installation"),
    (
        "p",
        "This chapter explains how to install the tidelog daemon `tideld` and the command-line tool "
        "`tidectl` on a Linux host, give an ordinary user access to the logger, and start the daemon "
        "for the first time.",
    ),
    ("h", 2, "Requirements"),
    (
        "p",
        "tidelog needs Linux 5.10 or newer, systemd 247 or newer and libusb 1.0.26. The logger itself "
        "must run firmware 3.2 or later; older firmware speaks a protocol the daemon no longer "
        "understands. About 40 MB of disk space is used by the packages, plus whatever the buffer "
        "directory grows to.",
    ),
    (
        "ul",
        [
            "A USB 2.0 port (USB 3 ports work but bring no speed benefit).",
            "Network access to the upload endpoint, if readings are uploaded.",
            "A user account that will run `tidectl`.",
        ],
    ),
    ("h", 2, "Installing the packages"),
    (
        "p",
        "On Debian and Ubuntu, add the Tidewater repository and install both packages with "
        "`apt install tideld tidectl`. On Fedora use `dnf install tideld tidectl`. The packages "
        "create the system user `tidelog`, the directory `/var/lib/tidelog` for buffered readings "
        "and the unit file `tideld.service`.",
    ),
    ("code", "sudo apt install tideld tidectl\nsudo systemctl enable --now tideld.service"),
    (
        "p",
        "Building from source is possible but unsupported: run `make PREFIX=/usr/local install` in the "
        "source tree, then install the udev rules below by hand.",
    ),
    ("h", 2, "udev rules"),
    (
        "p",
        "The kernel creates the logger's device node owned by root, so without a udev rule only root "
        "could open it. The packages install the rule file `/etc/udev/rules.d/60-tidelog.rules`, which "
        "matches the logger by its USB vendor ID 0x1d6b and product ID 0x0104 and hands the node to a "
        "group. After editing the file, reload the rules with `udevadm control --reload` and unplug "
        "the logger once.",
    ),
    (
        "code",
        'SUBSYSTEM=="usb", ATTRS{idVendor}=="1d6b", ATTRS{idProduct}=="0104", MODE="0660", GROUP="plugdev"',
    ),
    ("h", 3, "plugdev"),
    (
        "p",
        "The rule gives the device node to the group plugdev. Only members of the plugdev group can "
        "open the logger without root privileges, so add every user who runs `tidectl` to it with "
        "`usermod -aG plugdev NAME` and log in again; group membership is read at login only.",
    ),
    ("h", 3, "Rules on immutable systems"),
    (
        "p",
        "On image-based distributions where /etc is read-only at boot, copy the rule to "
        "`/run/udev/rules.d/` from a systemd unit instead; rules placed there are lost at the next "
        "reboot unless the unit runs again.",
    ),
    ("h", 2, "First start"),
    (
        "p",
        "Start the daemon with `systemctl start tideld` and check it with `tidectl status`. The daemon "
        "serves its local API on TCP port 7461, bound to 127.0.0.1 unless `listen_address` says "
        "otherwise. A healthy first start prints the logger's serial number and firmware version.",
    ),
    (
        "p",
        "To check an installation end to end, run `tidectl doctor`: it verifies the udev rule, the "
        "group membership of the current user, the firmware version, the clock and the reachability "
        "of the upload endpoint, and prints one line per check with OK or the problem found.",
    ),
]

CONFIGURATION: list[Block] = [
    ("h", 1, "Configuration"),
    (
        "p",
        "The daemon reads its settings once at start-up and again whenever it receives SIGHUP. Every "
        "setting has a default, so an empty configuration file is valid.",
    ),
    ("h", 2, "Where settings come from"),
    (
        "p",
        "Settings are read from three places. Command-line options of `tideld` take precedence over "
        "everything else. Environment variables named `TIDELD_` plus the key in capitals come next: "
        "environment variables take precedence over values in tideld.toml. The file "
        "`/etc/tidelog/tideld.toml` is read last, and its values apply only where neither an option "
        "nor a variable set the key.",
    ),
    (
        "p",
        "A key inside a table is written with a dot on the command line and with a double underscore "
        "in the environment: `--upload.endpoint` and `TIDELD_UPLOAD__ENDPOINT` set the same key.",
    ),
    ("h", 2, "Sampling keys"),
    (
        "dl",
        [
            (
                "sample_interval_ms",
                "Milliseconds between two readings; the default is 250. Values below 20 are rounded up to "
                "20, the fastest the logger's converter can deliver.",
            ),
            (
                "buffer_size",
                "How many readings the daemon keeps in memory before writing them to disk; counted in "
                "readings, not bytes. The default of 4096 covers about 17 minutes at the default interval.",
            ),
            (
                "channels",
                'List of channel names to sample, for example ["temp0", "hum0"]. An unknown channel '
                "name stops the daemon at start-up with error E120.",
            ),
        ],
    ),
    ("h", 2, "Upload keys"),
    (
        "dl",
        [
            (
                "upload.endpoint",
                "HTTPS address readings are sent to. When it is empty, nothing is uploaded and readings "
                "stay in /var/lib/tidelog until they are exported.",
            ),
            (
                "upload.retry_limit",
                "How many times a failed upload is retried before the batch is kept for later; the default "
                "is 5. On flaky mobile networks raise it to 20 and lengthen `upload.backoff_s`.",
            ),
            (
                "upload.backoff_s",
                "Seconds to wait before the first retry; each further retry waits twice as long.",
            ),
        ],
    ),
    ("h", 2, "Security keys"),
    (
        "dl",
        [
            (
                "allow_root",
                "When false (the default) tideld refuses to run as the root user and exits at once; set "
                "allow_root = true only in containers where the daemon cannot have a user of its own.",
            ),
            (
                "listen_address",
                "Address the local API binds to; the default 127.0.0.1 keeps it private to the host. "
                "Binding to 0.0.0.0 exposes the API to the network, so set `api.token_file` as well.",
            ),
        ],
    ),
    ("h", 2, "Storage"),
    (
        "p",
        "Buffered readings are written to `/var/lib/tidelog/buffer` in segment files of 8 MB. When "
        "the disk holding that directory is more than 95 percent full, the daemon stops writing "
        "segments and raises error E205 once the in-memory buffer is also full.",
    ),
]

TROUBLESHOOTING: list[Block] = [
    ("h", 1, "Troubleshooting guide"),
    (
        "p",
        "Every problem tideld detects is logged with an error code of the form E followed by three "
        "digits. The first digit names the area: 1 for the device, 2 for storage, 3 for time, 4 for "
        "uploads and 5 for firmware. This guide lists the codes with their causes and fixes.",
    ),
    ("h", 2, "Where to look first"),
    (
        "p",
        "The daemon writes its log to /var/log/tidelog/tideld.log and to the systemd journal; read "
        "the last lines with journalctl -u tideld -n 50. Raise the log level to debug with "
        "tidectl log-level debug; the level falls back to info at the next restart.",
    ),
    (
        "p",
        "Before reporting a problem, run tidectl doctor and attach its output together with the "
        "file written by tidectl bundle, which collects the log, the configuration with secrets "
        "removed and the firmware version.",
    ),
    ("h", 2, "Device errors"),
    ("h", 3, "E101 DEVICE_NOT_FOUND"),
    (
        "p",
        "The daemon found no logger with a matching vendor ID on any USB bus. Check the cable (many "
        "charging cables carry no data lines), try another port, and run lsusb to see whether the "
        "kernel enumerates the device at all. A logger in bootloader mode reports product ID 0x0105 "
        "and is not picked up until its firmware is flashed.",
    ),
    ("h", 3, "E102 PERMISSION_DENIED"),
    (
        "p",
        "The logger was found but its device node could not be opened. Either the udev rule is "
        "missing, or the user running the daemon is not in the group named in the rule. Running the "
        "daemon as root hides this error but is refused unless allow_root is set.",
    ),
    ("h", 3, "E120 UNKNOWN_CHANNEL"),
    (
        "p",
        "A name in the channels list does not exist on this logger model. tidectl channels lists "
        "the channel names the connected logger offers.",
    ),
    ("h", 2, "Storage errors"),
    ("h", 3, "E205 BUFFER_OVERFLOW"),
    (
        "p",
        "Readings arrived faster than they could be stored: the ring buffer filled faster than the "
        "daemon could write segments to disk, and the oldest readings in memory were dropped. Free "
        "disk space, move the buffer directory to a faster disk, or raise sample_interval_ms.",
    ),
    ("h", 3, "E230 SEGMENT_CORRUPT"),
    (
        "p",
        "A segment file failed its checksum when it was read back for upload. The segment is moved "
        "to /var/lib/tidelog/quarantine and skipped; tidectl segments verify checks all others.",
    ),
    ("h", 2, "Time errors"),
    ("h", 3, "E310 CLOCK_SKEW"),
    (
        "p",
        "The host clock and the logger's clock differ by more than two seconds. Readings are still "
        "recorded with the host's time, but uploads are refused by the server. Synchronise the host "
        "clock, for example with chronyc makestep, then run tidectl time sync to set the logger.",
    ),
    ("h", 2, "Upload errors"),
    ("h", 3, "E412 UPLOAD_REJECTED"),
    (
        "p",
        "The server refused the batch because its schema version is older than the server accepts. "
        "This happens after the server was upgraded and the daemon was not; install the current "
        "tideld package. Rejected batches stay in the buffer and are sent again after the upgrade.",
    ),
    ("h", 3, "E429 UPLOAD_THROTTLED"),
    (
        "p",
        "The server answered 429 and the daemon waits for the number of seconds in its Retry-After "
        "header before trying again. Frequent throttling means many loggers share one API token.",
    ),
    ("h", 2, "Firmware errors"),
    ("h", 3, "E500 FIRMWARE_MISMATCH"),
    (
        "p",
        "The logger runs firmware older than 3.2, which this daemon cannot talk to. Flash the "
        "firmware shipped with the package using tidectl flash; do not unplug the logger while the "
        "progress bar is shown.",
    ),
    ("h", 3, "E510 FLASH_VERIFY_FAILED"),
    (
        "p",
        "After flashing, the image read back from the logger did not match the file. Flash again; "
        "if it fails twice the flash memory is worn and the logger must be replaced.",
    ),
]

API_REFERENCE: list[Block] = [
    ("h", 1, "HTTP API reference"),
    (
        "p",
        "The Tidewater cloud API receives readings from tideld and serves them to applications. All "
        "requests use HTTPS and JSON, and every path starts with the version, currently /v2.",
    ),
    ("h", 2, "Authentication"),
    (
        "p",
        "Each request carries an API token in the header Authorization: Bearer followed by the token. "
        "Tokens are created in the web console under Settings, API tokens, and can be limited to "
        "read-only access. A missing or expired token is answered with 401 Unauthorized.",
    ),
    ("h", 2, "Rate limits"),
    (
        "p",
        "A token may make 600 requests per minute. Beyond that the API answers 429 Too Many Requests "
        "with a Retry-After header giving the seconds to wait. The headers X-RateLimit-Remaining and "
        "X-RateLimit-Reset report the budget left in the current minute on every response.",
    ),
    ("h", 2, "Endpoints"),
    ("h", 3, "GET /v2/readings"),
    (
        "p",
        "Returns readings of one logger between two times. Parameters: logger (serial number), from "
        "and to (RFC 3339 times), channel (optional) and limit. One page holds at most 1000 readings; "
        "when more exist, the response contains next_cursor, which is passed as cursor to get the "
        "following page. Readings come oldest first.",
    ),
    ("h", 3, "POST /v2/annotations"),
    (
        "p",
        "Attaches a note to a time range of one logger, for example a calibration or a door left "
        "open. The body holds logger, from, to and text; text is limited to 2000 characters.",
    ),
    ("h", 3, "DELETE /v2/loggers/{serial}"),
    (
        "p",
        "Removes a logger and all its readings from the account. The deletion is final after a grace "
        "period of 30 days, during which POST /v2/loggers/{serial}/restore brings it back.",
    ),
    ("h", 2, "Webhooks"),
    (
        "p",
        "The API can call an address of yours when a logger raises an alarm. Each call carries the "
        "header X-Tide-Signature, an HMAC-SHA256 of the raw request body computed with the webhook "
        "secret; compare it with your own HMAC in constant time before trusting the payload. Calls "
        "that do not answer 2xx within 10 seconds are retried up to 8 times over 6 hours.",
    ),
    ("h", 2, "Versions and deprecation"),
    (
        "p",
        "The API version is part of the path. Version v1 is deprecated: v1 endpoints will be removed "
        "on 1 March 2027, and until then every v1 response carries a Sunset header with that date. "
        "Breaking changes are only made in a new version; fields may be added to v2 at any time, so "
        "clients must ignore fields they do not know.",
    ),
    ("h", 2, "Errors"),
    (
        "p",
        "Errors are JSON objects with code, message and request_id. Quote the request_id when "
        "contacting support; it identifies the request in the server logs for 14 days.",
    ),
]

RUNBOOK: list[Block] = [
    ("h", 1, "Operations runbook"),
    (
        "p",
        "Routine procedures for people who run tidelog loggers in production: backups, upgrades, key "
        "rotation, monitoring, calibration and retiring a logger.",
    ),
    ("h", 2, "Backups"),
    (
        "p",
        "Take a snapshot before every upgrade. tidectl snapshot --output /srv/backup/tidelog.tar "
        "writes the buffer, the configuration and the logger's calibration table into one archive "
        "while the daemon keeps running.",
    ),
    (
        "ul",
        [
            "Keep at least the last three snapshots.",
            "Restore with tidectl restore FILE while the daemon is stopped.",
            "Snapshots hold the API token: store them like passwords.",
        ],
    ),
    ("h", 2, "Upgrading"),
    (
        "p",
        "Upgrade the packages first, then the firmware. After the package upgrade the daemon restarts "
        "on its own; run tidectl flash --verify to bring the logger to the firmware shipped with the "
        "package and read it back. Never upgrade firmware over a USB hub without its own power supply.",
    ),
    (
        "code",
        "tidectl snapshot --output /srv/backup/tidelog.tar\nsudo apt upgrade tideld tidectl\n"
        "tidectl flash --verify",
    ),
    ("h", 2, "Rotating keys"),
    (
        "p",
        "The webhook secret and the API token should be replaced every 180 days. tidectl keys rotate "
        "creates a new token, writes it to the token file and keeps the old one valid for one hour, "
        "so that uploads in flight still succeed.",
    ),
    ("h", 2, "Monitoring"),
    ("p", "tideld exports Prometheus metrics on the local API under /metrics. The ones worth an alert:"),
    (
        "table",
        [
            ["metric", "meaning", "alert when"],
            ["tideld_buffer_fill_ratio", "how full the in-memory buffer is, 0 to 1", "over 0.8 for 5 min"],
            ["tideld_upload_failures_total", "failed upload attempts", "rising for 30 min"],
            ["tideld_clock_offset_seconds", "host minus logger clock", "beyond 1 second"],
        ],
    ),
    ("h", 2, "Calibration"),
    (
        "p",
        "Humidity and temperature channels drift slowly. Calibrate the sensors every 90 days against "
        "a reference instrument with tidectl calibrate CHANNEL REFERENCE_VALUE; the new offsets are "
        "stored on the logger and recorded as an annotation.",
    ),
    ("h", 2, "Decommissioning"),
    (
        "p",
        "To retire a logger for good, export its remaining readings, then run tidectl forget SERIAL, "
        "which removes the logger from the daemon's configuration and deletes its buffer, and finally "
        "delete it in the web console or through the API.",
    ),
]

MANUALS = {
    "installation": ("tidelog manual: Installation", INSTALLATION),
    "configuration": ("tidelog manual: Configuration", CONFIGURATION),
    "troubleshooting": ("Tidelog Troubleshooting Guide", TROUBLESHOOTING),
    "api": ("Tidelog HTTP API Reference", API_REFERENCE),
    "runbook": ("Tidelog Operations Runbook", RUNBOOK),
}
