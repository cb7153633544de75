"""train.average_last: a step's model is the mean of its last epochs' weights (SWA)."""
import pytest
import torch

from raytag.training.averaging import WeightAverage
from raytag.training.checkpoint import load_train_state, save_train_state


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(3)).eval()


def _snapshots(net, n):
    """n different weight sets (and BatchNorm statistics) of `net`, as plain state dicts."""
    net(torch.zeros(1, 1, 5, 5))  # materialise the lazy layer
    out = []
    for i in range(n):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(float(i))
            net[1].num_batches_tracked.fill_(10 * (i + 1))
        out.append({k: v.clone() for k, v in net.state_dict().items()})
    return out


@pytest.mark.parametrize("average_last, epochs, joins", [(0, 5, []), (1, 5, []), (3, 6, [4, 5, 6]),
                                                         (5, 30, [26, 27, 28, 29, 30]),
                                                         (5, 8, [5, 6, 7, 8]),  # at most the second half
                                                         (5, 3, [])])
def test_the_window_is_the_steps_last_epochs(average_last, epochs, joins):
    avg = WeightAverage(average_last, epochs)
    assert [e for e in range(1, epochs + 1) if avg.wants(e)] == joins
    assert avg.enabled == bool(joins)


def test_the_model_gets_the_mean_of_the_added_weights_and_the_last_counter():
    net = _net()
    snaps = _snapshots(net, 3)
    avg = WeightAverage(3, 6)
    for snap in snaps:
        net.load_state_dict(snap)
        avg.add(net)
    avg.load_into(net)
    got = net.state_dict()
    for key, value in got.items():
        if value.is_floating_point():
            expected = sum(s[key].double() for s in snaps) / 3
            assert torch.allclose(value.double(), expected, atol=1e-6), key
            assert value.dtype == snaps[0][key].dtype
    assert int(got["1.num_batches_tracked"]) == 30  # integer buffers: the last value, not a mean


def test_the_running_sum_survives_a_checkpoint(tmp_path):
    """A resumed step inside its window continues the same sum (train_state.average)."""
    net = _net()
    snaps = _snapshots(net, 4)
    whole = WeightAverage(4, 8)
    first = WeightAverage(4, 8)
    for i, snap in enumerate(snaps):
        net.load_state_dict(snap)
        whole.add(net)
        if i < 2:
            first.add(net)
    save_train_state(tmp_path, {"average": first.state()})
    resumed = WeightAverage(4, 8)
    resumed.restore(load_train_state(tmp_path)["average"])
    for snap in snaps[2:]:
        net.load_state_dict(snap)
        resumed.add(net)
    a, b = _net(), _net()
    a(torch.zeros(1, 1, 5, 5)), b(torch.zeros(1, 1, 5, 5))
    whole.load_into(a)
    resumed.load_into(b)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_nothing_added_leaves_the_model_alone():
    net = _net()
    net(torch.zeros(1, 1, 5, 5))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    avg = WeightAverage(0, 5)
    avg.load_into(net)
    assert avg.state() is None
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: a resume loads the sums on the CPU")
def test_a_running_sum_restored_on_the_cpu_adds_up_with_a_gpu_model(tmp_path):
    net = _net().cuda()
    first = WeightAverage(4, 8)
    first.add(net)
    save_train_state(tmp_path, {"average": first.state()})
    resumed = WeightAverage(4, 8)
    resumed.restore(load_train_state(tmp_path)["average"])  # safetensors loads onto the CPU
    resumed.add(net)  # raised a device mismatch when the sums followed the model's device
    resumed.load_into(net)
    assert all(t.device.type == "cpu" and (t.dtype == torch.float64 or not t.is_floating_point())
               for t in resumed.total.values())
