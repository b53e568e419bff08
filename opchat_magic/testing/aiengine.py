"""The real AI Engine plugin on 127.0.0.1: WordPress + MariaDB + ``php -S``, for tests.

AI Engine (Meow Apps) is the WordPress plugin opchatgpts.net ran; the
``Opchatgpts`` provider speaks its chatbot endpoint. :class:`AIEngineSite` stands
the real plugin up from its source archive, with nothing on the network but
127.0.0.1:

* a private MariaDB (``mariadb-install-db`` + ``mariadbd --skip-networking`` on a
  unix socket in a temp dir);
* WordPress from Debian's ``/usr/share/wordpress`` (top-level files copied, the
  big read-only trees symlinked) with its own ``wp-config.php``;
* the plugin unpacked from the archive into ``wp-content/plugins/ai-engine``;
* ``php -S 127.0.0.1:PORT router.php`` with ``PHP_CLI_SERVER_WORKERS=3`` (a stream
  needs one worker while others answer ``start_session``); a second ``php -S``
  on another port serves a second site (same files and database, tables
  ``plain_*``) installed with *plain* permalinks;
* installed by a PHP CLI script (``wp_install``, permalinks, plugin activation,
  ``mwai_options`` with a "custom" (OpenAI-compatible) environment pointing at
  the model server you give it, chatbots, the Discussions module).

The model behind the chatbot is any OpenAI-compatible server: tests pass our own
:class:`opchat_magic.server.LocalServer`, so they can see exactly what the plugin
sent upstream and inject upstream faults.

Where the archive, PHP, MariaDB or WordPress are missing, :func:`missing` says
why (tests skip with that reason, or fail when ``OPCHAT_REQUIRE_AIENGINE=1``).

Run by hand, it stands a site up and waits::

    python -m opchat_magic.testing.aiengine     # prints the site URL; Ctrl-C tears it down
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

from . import free_port

__all__ = ["AIEngineSite", "find_archive", "missing", "ARCHIVE_ENV", "REQUIRE_ENV", "ARCHIVE_NAME",
           "PACKAGES", "MODEL"]

ARCHIVE_ENV = "OPCHAT_AIENGINE_ARCHIVE"
REQUIRE_ENV = "OPCHAT_REQUIRE_AIENGINE"
ARCHIVE_NAME = "ai-engine-3.6.2.tar.gz"
WORDPRESS = Path("/usr/share/wordpress")
PACKAGES = "php-cli php-mysql php-curl php-mbstring php-xml mariadb-server mariadb-client wordpress"
MODEL = "opchat-local"  # the model name the chatbot asks the upstream server for
PLUGIN = "ai-engine/ai-engine.php"
# The bots the install script creates (botId -> chatbot settings merged over the plugin's defaults).
BOTS = {
    "default": {"name": "Default", "instructions": "You are the opchat test bot."},
    # No instructions: the model receives exactly the messages the client sent.
    "bare": {"name": "Bare", "instructions": "", "startSentence": ""},
}


def find_archive() -> Optional[Path]:
    """The plugin archive: ``$OPCHAT_AIENGINE_ARCHIVE``, else ``shared/peers/<ARCHIVE_NAME>`` in
    the repository's parent or any folder above it (CI clones the repo beside ``shared/``;
    worktrees sit one level deeper)."""
    given = os.environ.get(ARCHIVE_ENV)
    if given:
        path = Path(given).expanduser()
        return path if path.is_file() else None
    # The clone this module lives in (an editable install), else the working directory.
    for start in (Path(__file__).resolve().parents[2], Path.cwd().resolve()):
        for folder in start.parents:
            candidate = folder / "shared" / "peers" / ARCHIVE_NAME
            if candidate.is_file():
                return candidate
    return None


def _which(*names: str) -> List[str]:
    return [n for n in names if shutil.which(n) is None and not Path("/usr/sbin", n).exists()]


def missing() -> Optional[str]:
    """Why the real plugin cannot be stood up here, or None when it can."""
    archive = find_archive()
    if archive is None:
        given = os.environ.get(ARCHIVE_ENV)
        return (f"{ARCHIVE_ENV}={given!r} is not a file" if given else
                f"the AI Engine archive {ARCHIVE_NAME} was not found in shared/peers/ beside the repository "
                f"(set {ARCHIVE_ENV})")
    absent = _which("php", "mariadbd", "mariadb-install-db", "mariadb")
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install -y {PACKAGES})"
    if not (WORDPRESS / "wp-settings.php").is_file():
        return f"WordPress is not in {WORDPRESS} (apt-get install -y wordpress)"
    try:
        modules = subprocess.run(["php", "-m"], capture_output=True, text=True, timeout=30).stdout.lower().split()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"php -m failed: {exc}"
    absent = [m for m in ("mysqli", "curl", "mbstring") if m not in modules]
    if absent:
        return f"PHP modules missing: {', '.join(absent)} (apt-get install -y {PACKAGES})"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


_ROUTER = r"""<?php
// php -S router: real files as they are, everything else to WordPress's index.php.
$path = rawurldecode(parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?? '/');
$file = __DIR__ . $path;
if ($path !== '/' && is_file($file) && strpos($path, '..') === false) {
    return false;
}
$_SERVER['SCRIPT_NAME'] = '/index.php';
$_SERVER['SCRIPT_FILENAME'] = __DIR__ . '/index.php';
$_SERVER['PHP_SELF'] = '/index.php';
require __DIR__ . '/index.php';
"""

_WP_CONFIG = r"""<?php
// Written by opchat_magic.testing.aiengine: a throw-away test site on 127.0.0.1.
define('DB_NAME', 'wordpress');
define('DB_USER', %(db_user)s);
define('DB_PASSWORD', '');
define('DB_HOST', %(db_host)s);
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
// Two sites, one per port: pretty permalinks (tables wp_*) and plain ones (tables plain_*).
// PHP CLI scripts choose with the environment variable OPCHAT_WP_PORT.
$opchat_port = isset($_SERVER['SERVER_PORT']) ? (int) $_SERVER['SERVER_PORT'] : (int) (getenv('OPCHAT_WP_PORT') ?: %(port)d);
define('WP_HOME', 'http://127.0.0.1:' . $opchat_port);
define('WP_SITEURL', 'http://127.0.0.1:' . $opchat_port);
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_AUTO_UPDATE_CORE', false);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('WP_ACCESSIBLE_HOSTS', '127.0.0.1,localhost');
define('WP_DEBUG', false);
define('WP_DEBUG_LOG', %(debug_log)s);
%(salts)s
$table_prefix = $opchat_port === %(plain_port)d ? 'plain_' : 'wp_';
if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
"""

_INSTALL = r"""<?php
// Install WordPress and configure AI Engine; argv[1] = JSON settings.
define('WP_INSTALLING', true);
$cfg = json_decode($argv[1], true);
$_SERVER['HTTP_HOST'] = '127.0.0.1:' . $cfg['port'];
require __DIR__ . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
require_once ABSPATH . 'wp-admin/includes/plugin.php';
if (!is_blog_installed()) {
    wp_install('opchat test site', 'admin', 'admin@example.invalid', false, '', wp_generate_password(20));
}
update_option('permalink_structure', $cfg['permalinks']);
update_option('rewrite_rules', '');
$result = activate_plugin('ai-engine/ai-engine.php');
if (is_wp_error($result)) { fwrite(STDERR, $result->get_error_message()); exit(2); }
global $mwai_core;
if (!$mwai_core) {
    // activate_plugin() includes the plugin file, but its init runs on plugins_loaded.
    do_action('plugins_loaded');
    do_action('init');
}
global $mwai_core;
if (!$mwai_core) { fwrite(STDERR, "AI Engine did not load\n"); exit(3); }
$options = get_option('mwai_options', []);
$options = is_array($options) ? $options : [];
$env = [
    'id' => 'opchat-env', 'name' => 'opchat local', 'type' => 'custom', 'apikey' => '',
    'endpoint' => $cfg['endpoint'],
    'models' => [[
        'model' => $cfg['model'], 'name' => $cfg['model'], 'family' => 'custom',
        'features' => ['completion'], 'type' => 'token', 'tags' => ['core', 'chat'],
        'price' => ['in' => 0, 'out' => 0], 'maxCompletionTokens' => 4096, 'maxContextualTokens' => 32768,
    ]],
];
$options['ai_envs'] = [$env];
$options['ai_default_env'] = 'opchat-env';
$options['ai_default_model'] = $cfg['model'];
$options['ai_fast_default_env'] = 'opchat-env';
$options['ai_fast_default_model'] = $cfg['model'];
$options['ai_streaming'] = true;
$options['module_chatbots'] = true;
$options['chatbot_discussions'] = true;
$options['chatbot_discussions_titling'] = false;
$options['module_devtools'] = false;
$options['event_logs'] = false;
update_option('mwai_options', $options);
$bots = [];
foreach ($cfg['bots'] as $botId => $bot) {
    $bots[] = array_merge(MWAI_CHATBOT_DEFAULT_PARAMS, $bot, [
        'botId' => $botId, 'envId' => 'opchat-env', 'model' => $cfg['model'],
    ]);
}
update_option('mwai_chatbots', $bots);
$mwai_core->get_all_options(true, true);
if ($mwai_core->discussions) { $mwai_core->discussions->check_db(); }
echo json_encode(['ok' => true, 'version' => MWAI_VERSION]);
"""

# A PHP snippet runner: loads WordPress (as a guest) and evaluates argv[1].
_EVAL = r"""<?php
$_SERVER['HTTP_HOST'] = '127.0.0.1:' . getenv('OPCHAT_WP_PORT');
require __DIR__ . '/wp-load.php';
echo json_encode(eval($argv[1]));
"""


class AIEngineSite:
    """A WordPress site running the real AI Engine plugin on 127.0.0.1.

    ``AIEngineSite(upstream_url).start()`` (or ``with AIEngineSite(...) as site:``);
    ``upstream_url`` is an OpenAI-compatible base URL (``http://127.0.0.1:P/v1``)
    that serves model :data:`MODEL`.

    url         the pretty-permalink site (``/wp-json/...`` works)
    plain_url   the same site with plain permalinks (``/?rest_route=/...`` only)
    """

    def __init__(self, upstream_url: str, *, archive: Optional[Path] = None, root: Optional[Path] = None,
                 model: str = MODEL, log=None):
        self.upstream_url = upstream_url.rstrip("/")
        self.archive = Path(archive) if archive else find_archive()
        self.model = model
        self._own_root = root is None
        self.root = Path(root) if root else None
        self._log = log or (lambda message: None)
        self._procs: List[subprocess.Popen] = []
        self.port = self.plain_port = 0
        self.timings: dict = {}

    # -- addresses -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}"

    @property
    def submit_url(self) -> str:
        return self.url + "/wp-json/mwai-ui/v1/chats/submit"

    @property
    def docroot(self) -> Path:
        return self.root / "www"

    @property
    def socket(self) -> Path:
        return self.root / "db" / "mysqld.sock"

    # -- life cycle --------------------------------------------------------------

    def __enter__(self) -> "AIEngineSite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> "AIEngineSite":
        why = missing() if self.archive is None or not self.archive.is_file() else None
        if why or self.archive is None:
            raise RuntimeError(f"cannot stand up AI Engine: {why or 'no archive'}")
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="opchat-aiengine-"))
        t0 = time.monotonic()
        try:
            self._start_db(timeout)
            self.timings["db"] = time.monotonic() - t0
            self._lay_out_wordpress()
            self.timings["files"] = time.monotonic() - t0
            self.port, self.plain_port = free_port(), free_port()
            while self.plain_port == self.port:
                self.plain_port = free_port()
            self._write_config()
            self._install()
            self.timings["install"] = time.monotonic() - t0
            for port in (self.port, self.plain_port):
                self._serve(port)
            for port in (self.port, self.plain_port):
                self._wait_http(f"http://127.0.0.1:{port}/wp-json/", timeout)
            self.timings["ready"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Each process leads its own process group (start_new_session): php -S forks its
        # PHP_CLI_SERVER_WORKERS into that group, and they outlive a parent killed alone.
        for proc in reversed(self._procs):
            self._signal_group(proc, signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(5)
            self._signal_group(proc, signal.SIGKILL)  # any worker still there
        self._procs.clear()
        if self._own_root and self.root is not None and os.environ.get("OPCHAT_AIENGINE_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- pieces ------------------------------------------------------------------

    def _db_user(self) -> str:
        return "root" if os.geteuid() == 0 else getpass.getuser()

    def _start_db(self, timeout: float) -> None:
        data = self.root / "db"
        data.mkdir(parents=True, exist_ok=True)
        install = [_sbin("mariadb-install-db"), "--no-defaults", f"--datadir={data / 'data'}",
                   "--auth-root-authentication-method=socket", "--skip-test-db"]
        if os.geteuid() == 0:
            install.append("--user=root")
        self._run(install, "mariadb-install-db", timeout=timeout)
        cmd = [_sbin("mariadbd"), "--no-defaults", f"--datadir={data / 'data'}", f"--socket={self.socket}",
               "--skip-networking", f"--pid-file={data / 'mysqld.pid'}", f"--log-error={data / 'error.log'}",
               "--innodb-buffer-pool-size=32M", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
               "--skip-name-resolve"]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        self._procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))
        deadline = time.monotonic() + timeout
        while True:
            if self._procs[-1].poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self._tail(data / 'error.log')}")
            if self.socket.exists():
                probe = subprocess.run(self._mysql("SELECT 1"), capture_output=True, text=True)
                if probe.returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not start in {timeout:g} s: {self._tail(data / 'error.log')}")
            time.sleep(0.1)
        self._run(self._mysql("CREATE DATABASE IF NOT EXISTS wordpress CHARACTER SET utf8mb4"), "CREATE DATABASE")

    def _mysql(self, statement: str, database: str = "") -> list:
        cmd = ["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", self._db_user(), "-N", "-B",
               "-e", statement]
        return cmd + ([database] if database else [])

    def sql(self, statement: str) -> List[List[str]]:
        """Run SQL in the site's database; rows as lists of strings."""
        out = subprocess.run(self._mysql(statement, "wordpress"), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"SQL failed: {statement!r}: {out.stderr.strip()}")
        return [line.split("\t") for line in out.stdout.splitlines()]

    def _lay_out_wordpress(self) -> None:
        www = self.docroot
        www.mkdir(parents=True)
        # The top-level files are copied (WordPress finds wp-config.php beside the
        # real path of wp-load.php); the read-only trees are symlinked.
        for entry in WORDPRESS.iterdir():
            if entry.name in ("wp-config.php", "wp-content", ".htaccess"):
                continue
            if entry.is_dir():
                (www / entry.name).symlink_to(entry)
            else:
                shutil.copy2(entry, www / entry.name)
        content = www / "wp-content"
        (content / "plugins").mkdir(parents=True)
        (content / "mu-plugins").mkdir()
        (content / "uploads").mkdir()
        themes = WORDPRESS / "wp-content" / "themes"
        (content / "themes").mkdir()
        for theme in themes.iterdir():
            (content / "themes" / theme.name).symlink_to(theme)
        with tarfile.open(self.archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("ai-engine/")
                       and not m.name.startswith(("ai-engine/images/", "ai-engine/labs/"))]
            if sys.version_info >= (3, 12):
                tar.extractall(content / "plugins", members=members, filter="data")
            else:
                tar.extractall(content / "plugins", members=members)
        (www / "router.php").write_text(_ROUTER)
        (www / "opchat-install.php").write_text(_INSTALL)
        (www / "opchat-eval.php").write_text(_EVAL)

    def _write_config(self) -> None:
        import secrets as _secrets

        salts = "\n".join(
            f"define({name!r}, {_secrets.token_hex(32)!r});"
            for name in ("AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY",
                         "AUTH_SALT", "SECURE_AUTH_SALT", "LOGGED_IN_SALT", "NONCE_SALT")
        )
        php = _WP_CONFIG % {
            "db_user": json.dumps(self._db_user()),
            "db_host": json.dumps(f"localhost:{self.socket}"),
            "port": self.port,
            "plain_port": self.plain_port,
            "salts": salts,
            "debug_log": json.dumps(str(self.root / "debug.log")),
        }
        (self.docroot / "wp-config.php").write_text(php)

    def _install(self) -> None:
        for port, permalinks in ((self.port, "/%postname%/"), (self.plain_port, "")):
            cfg = {"endpoint": self.upstream_url, "model": self.model, "bots": BOTS, "port": port,
                   "permalinks": permalinks}
            out = self._run(["php", "opchat-install.php", json.dumps(cfg)], "the install script",
                            cwd=self.docroot, env={**os.environ, "OPCHAT_WP_PORT": str(port)})
            if '"ok":true' not in out:
                raise RuntimeError(f"the install script said: {out[-2000:]}")

    def _serve(self, port: int) -> None:
        env = {**os.environ, "PHP_CLI_SERVER_WORKERS": "3"}
        log = open(self.root / f"php-{port}.log", "wb")
        try:
            proc = subprocess.Popen(
                ["php", "-d", "output_buffering=0", "-d", "max_execution_time=0",
                 "-S", f"127.0.0.1:{port}", "router.php"],
                cwd=self.docroot, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        self._procs.append(proc)

    def _wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    response.read()
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means php -S and WordPress are up
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer within {timeout:g} s")
                time.sleep(0.1)

    def _run(self, cmd: list, what: str, cwd=None, timeout: float = 120.0, env=None) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{what} failed ({out.returncode}): {(out.stderr or out.stdout)[-2000:]}")
        return out.stdout

    @staticmethod
    def _tail(path: Path, n: int = 1500) -> str:
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    # -- helpers for tests ---------------------------------------------------------

    def php(self, code: str, plain: bool = False):
        """Evaluate PHP ``code`` (a function body ending in ``return ...;``) in the pretty (or the
        plain) site's WordPress, as a guest; its return value, through JSON."""
        port = self.plain_port if plain else self.port
        out = self._run(["php", "opchat-eval.php", code], "PHP", cwd=self.docroot,
                        env={**os.environ, "OPCHAT_WP_PORT": str(port)})
        return json.loads(out)

    def set_option(self, key: str, value) -> None:
        """Set one AI Engine option (``mwai_options[key]``)."""
        self.php(f"global $mwai_core; $o = get_option('mwai_options'); $o[{json.dumps(key)}] = "
                 f"json_decode({json.dumps(json.dumps(value))}, true); update_option('mwai_options', $o); "
                 f"return true;")

    def discussions(self, plain: bool = False) -> List[dict]:
        """The discussions the plugin stored: ``[{chatId, botId, messages}]``, oldest first."""
        rows = self.php("global $wpdb; return $wpdb->get_results("
                        "\"SELECT chatId, botId, messages FROM {$wpdb->prefix}mwai_chats ORDER BY id\", ARRAY_A);", plain)
        return [{**row, "messages": json.loads(row["messages"]) if row.get("messages") else []} for row in rows]

    def previous_tick_nonce(self) -> str:
        """A guest REST nonce from the previous nonce tick: still valid (12-24 h old), not current."""
        return self.php("$i = wp_nonce_tick() - 1; return substr(wp_hash($i . '|wp_rest|0|', 'nonce'), -12, 10);")


def main() -> None:  # pragma: no cover - a manual tool
    from ..server import LocalServer

    why = missing()
    if why:
        sys.exit(why)
    with LocalServer(delay=0.02) as upstream:
        with AIEngineSite(upstream.openai_base_url, root=None) as site:
            print(f"AI Engine site: {site.url}  (plain permalinks: {site.plain_url})")
            print(f"model server:   {upstream.openai_base_url}   timings: {site.timings}")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":  # pragma: no cover
    main()
