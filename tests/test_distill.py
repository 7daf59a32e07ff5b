import copy

import torch

from edgecompress.config import DistillConfig
from edgecompress.models.zoo import create_model
from edgecompress.train.distill import distill, kd_loss
from edgecompress.train.loop import TrainConfig, cross_entropy, fit, top1

from .conftest import quadrants as _quadrants


def test_kd_loss_is_zero_when_student_equals_teacher_and_alpha_one():
    logits = torch.randn(8, 5)
    assert float(kd_loss(logits, logits, None, 1.0, 4.0)) < 1e-6
    assert float(kd_loss(logits, logits + torch.randn(8, 5), None, 1.0, 4.0)) > 1e-3


def test_distillation_repairs_a_damaged_student():
    torch.manual_seed(0)
    train, test = _quadrants(1024, 0), _quadrants(512, 1)
    teacher = create_model("resnet8-tiny", num_classes=4)
    fit(teacher, train, TrainConfig(epochs=6, lr=0.05, augment_flip=False, augment_shift=0), cross_entropy)
    teacher_acc = top1(teacher, test)
    assert teacher_acc > 0.9
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # damage: heavy noise on every conv weight
        for m in student.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.add_(torch.randn_like(m.weight) * m.weight.std() * 1.5)
    before = top1(student, test)
    res = distill(student, teacher, train, DistillConfig(epochs=4, lr=0.05), val=test)
    after = top1(student, test)
    assert res.steps > 0
    assert after > before + 0.1, (before, after)
    assert after > 0.85
    # the teacher is left as it was
    assert top1(teacher, test) == teacher_acc


def test_distill_leaves_the_teacher_trainable_and_prunable():
    from edgecompress.config import PruneConfig
    from edgecompress.prune import prune

    teacher = create_model("resnet8-tiny", num_classes=4).eval()
    student = copy.deepcopy(teacher)
    distill(student, teacher, _quadrants(64, 0), DistillConfig(epochs=0.5))
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    res = prune(teacher, torch.zeros(1, 1, 16, 16), PruneConfig(ratio=0.5, round_to=2))
    assert res.macs_after <= 0.5 * res.macs_before
