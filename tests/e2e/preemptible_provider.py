"""Ray's fake multi-node provider with a cloud's view of an instance that is taken away, for
tests/e2e/test_autoscaling.py. The autoscaler's monitor process loads it (provider type
``external``), so it must import without the test suite.

A cloud lists a preempted or terminated instance as gone; Ray's FakeMultiNodeProvider keeps
listing a node whose processes died, and Ray 2.60's v1 autoscaler then never lets it go: the
node's status tag stays ``uninitialized`` (the launcher's tag; no node updater runs on this
provider), so ``terminate_unhealthy_nodes`` skips it, and the placement groups of the trials it
lost count it as the node that will hold them, so it is never idle either. No replacement is
launched and the study waits forever. Here a node whose raylet has exited is reported
terminated, as the cloud would report the instance, and the rest of its processes end with it.
"""

from __future__ import annotations

from ray._private import ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class PreemptibleFakeMultiNodeProvider(FakeMultiNodeProvider):
    def non_terminated_nodes(self, tag_filters):
        with self.lock:
            for node_id, entry in list(self._nodes.items()):
                node = entry.get("node")  # the head has none: the provider did not start it
                if node is None:
                    continue
                raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])
                if raylets and raylets[0].process.poll() is not None:
                    # the instance is gone: what else ran on it goes too (its log monitor)
                    self._terminate_node(self._nodes.pop(node_id))
            return super().non_terminated_nodes(tag_filters)
