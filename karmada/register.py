"""The steps an operator runs to join a member cluster to Karmada in Pull mode (a karmada-agent in
the member cluster registers it), as printable shell lines: `#` lines say where and why, the others
are commands, each built from an argument list with `shlex.join` so any name quotes safely.

Flags follow karmadactl's `token create --print-register-command` and `register <apiserver>
--token ... --discovery-token-ca-cert-hash ... --cluster-name ...` (karmada-io/karmada
`pkg/karmadactl/register`); the values in CAPITALS are printed by the token command.
"""

from __future__ import annotations

import json
import shlex

__all__ = ["DEFAULT_KARMADA_KUBECONFIG", "pull_mode_steps"]

#: Where `karmadactl init` writes the Karmada apiserver's kubeconfig.
DEFAULT_KARMADA_KUBECONFIG = "/etc/karmada/karmada-apiserver.config"


def _karmada(args: list[str], kubeconfig: str, context: str | None, *, tool: str = "kubectl") -> str:
    ctx_flag = "--karmada-context" if tool == "karmadactl" else "--context"
    return shlex.join([tool, *args, "--kubeconfig", kubeconfig, *([ctx_flag, context] if context else [])])


def pull_mode_steps(site: str, *, cluster: str, karmada_context: str | None, site_labels: dict[str, str],
                    karmada_kubeconfig: str | None = None) -> list[str]:
    """Lines to print for registering `cluster` (the Karmada Cluster name) as site `site`:
    a bootstrap token on the control plane, `karmadactl register` on the member cluster, checks of
    the karmada-agent, the site labels on the Cluster, and the Pull-mode proxy caveat."""
    kc = karmada_kubeconfig or DEFAULT_KARMADA_KUBECONFIG
    labels = [f"{k}={v}" for k, v in site_labels.items()]
    proxy_patch = json.dumps({"spec": {"proxyURL": "http://PROXY_HOST:PORT"}})
    return [
        f"# 1. On the Karmada control plane: a bootstrap token (24 h) and the register command for site {site}",
        _karmada(["token", "create", "--print-register-command"], kc, karmada_context, tool="karmadactl"),
        "# 2. On the member cluster (its kubeconfig): run the printed command, naming the cluster",
        shlex.join(["karmadactl", "register", "KARMADA_APISERVER:PORT", "--token", "TOKEN",
                    "--discovery-token-ca-cert-hash", "sha256:HASH", "--cluster-name", cluster,
                    "--kubeconfig", "MEMBER_KUBECONFIG"]),
        "# 3. On the member cluster: the karmada-agent is running and registered the cluster",
        shlex.join(["kubectl", "-n", "karmada-system", "get", "deploy", "karmada-agent"]),
        shlex.join(["kubectl", "-n", "karmada-system", "logs", "deploy/karmada-agent", "--tail", "50"]),
        "# 4. On the Karmada apiserver: label the Cluster with the site (placement selects by it)",
        _karmada(["label", "cluster", cluster, *labels, "--overwrite"], kc, karmada_context),
        _karmada(["get", "cluster", cluster], kc, karmada_context),
        "# 5. Pull mode: the aggregated proxy (the site gateway's path) dials the Cluster's spec.apiEndpoint;",
        "#    if the control plane cannot reach it, set spec.proxyURL to a proxy that can, else requests get 503:",
        _karmada(["patch", "cluster", cluster, "--type", "merge", "-p", proxy_patch], kc, karmada_context),
    ]
