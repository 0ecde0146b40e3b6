"""Tissue codes of the phantom's internal tissue map, their HU tables and the ranges of the random draws."""

from __future__ import annotations

from dataclasses import dataclass

from flare_seg import labels as flare_labels

#: Mean HU of the real portal-venous slab (TotalSegmentator pseudo labels) to compare realism against.
REAL_SLAB_MEAN_HU = {"liver": 89.0, "spleen": 80.0, "pancreas": 61.0}

PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")

# Tissue codes of the internal tissue map (uint8). Codes >= LM_BASE are classes of a label map.
(AIR, SKIN, SUBCUT_FAT, MUSCLE, VISC_FAT, ABOVE_DOME, LUNG, CORTICAL, CANCELLOUS, DISC, CSF,
 CARTILAGE, TABLE, ARTERY, VEIN, PORTAL, HEART_BLOOD, MYOCARDIUM, LIVER, LIVER_VESSEL,
 KIDNEY_CORTEX, KIDNEY_MEDULLA, URINE, SPLEEN, PANCREAS, BILE, BOWEL_WALL, BOWEL_FLUID, GAS,
 STOOL) = range(30)
LM_BASE = 64
TISSUE_LABEL = {LIVER: flare_labels.LIVER, LIVER_VESSEL: flare_labels.LIVER,
                 KIDNEY_CORTEX: flare_labels.KIDNEY, KIDNEY_MEDULLA: flare_labels.KIDNEY,
                 SPLEEN: flare_labels.SPLEEN, PANCREAS: flare_labels.PANCREAS}

#: HU ranges (uniform draws) of the tissues whose value does not depend on the contrast phase.
STATIC_HU = {AIR: (-1010, -990), SKIN: (20, 60), SUBCUT_FAT: (-115, -85), VISC_FAT: (-105, -80),
             LUNG: (-880, -820), CORTICAL: (700, 1200), CANCELLOUS: (170, 300), DISC: (70, 110),
             CSF: (5, 30), CARTILAGE: (100, 180), TABLE: (150, 400), BILE: (0, 20),
             BOWEL_FLUID: (0, 25), GAS: (-1000, -960), STOOL: (-40, 40)}
PHASE_TISSUES = (MUSCLE, ARTERY, VEIN, PORTAL, HEART_BLOOD, MYOCARDIUM, LIVER, LIVER_VESSEL,
                  KIDNEY_CORTEX, KIDNEY_MEDULLA, URINE, SPLEEN, PANCREAS, BOWEL_WALL)
#: Phase-dependent HU ranges, in the order of ``PHASE_TISSUES``: muscle, aorta, IVC, portal
#: vein, heart blood, myocardium, liver, liver vessels, kidney cortex, kidney medulla, urine,
#: spleen, pancreas, bowel wall.
PHASE_HU = {
    "non_contrast": ((40, 55), (35, 50), (35, 50), (35, 50), (35, 50), (40, 55), (52, 66),
                     (35, 48), (28, 40), (25, 38), (0, 15), (42, 52), (38, 50), (35, 50)),
    "arterial": ((50, 65), (250, 400), (70, 120), (110, 170), (200, 350), (90, 130), (65, 85),
                 (75, 115), (180, 260), (70, 110), (0, 15), (100, 140), (100, 130), (80, 120)),
    "portal_venous": ((50, 65), (140, 200), (120, 180), (150, 200), (130, 180), (90, 120),
                      (80, 96), (140, 185), (150, 190), (140, 180), (5, 20), (74, 92), (64, 82),
                      (70, 110)),
    "delayed": ((50, 60), (90, 130), (90, 130), (90, 130), (90, 130), (70, 100), (65, 85),
                (85, 120), (120, 170), (130, 190), (200, 900), (65, 85), (55, 75), (60, 90)),
}


@dataclass(frozen=True)
class PhantomConfig:
    """Ranges of the random draws; ``(lo, hi)`` pairs are uniform. Defaults: adult, mostly portal venous."""

    cavity_half_width_mm: tuple[float, float] = (115.0, 140.0)  # inside the lateral muscle wall
    cavity_depth_mm: tuple[float, float] = (95.0, 125.0)  # vertebral body centre to anterior wall
    subcutaneous_fat_mm: tuple[float, float] = (6.0, 35.0)
    muscle_wall_mm: tuple[float, float] = (7.0, 13.0)
    organ_scale: tuple[float, float] = (0.88, 1.12)
    organ_shift_mm: float = 7.0  # standard deviation of each organ's position jitter
    organ_rotation_deg: float = 6.0  # standard deviation of each organ's pose angles
    height_scale: tuple[float, float] = (0.92, 1.08)
    deformation_mm: float = 6.0  # amplitude of the smooth random displacement of organ shapes
    phase_weights: tuple[tuple[str, float], ...] = (
        ("non_contrast", 0.1), ("arterial", 0.1), ("portal_venous", 0.7), ("delayed", 0.1))
    noise_sigma_hu: tuple[float, float] = (8.0, 16.0)
    kernel_smoothing: tuple[float, float] = (0.08, 0.25)  # in-plane [w, 1-2w, w] blur of image and noise
    slice_thickness_mm: tuple[float, float] = (1.0, 5.0)
    gas_probability: float = 0.85
    oral_contrast_probability: float = 0.1
    gallbladder_probability: float = 0.9
    table_probability: float = 0.7
    label_map_hu: tuple[float, float] = (-50.0, 250.0)  # per-class HU in phantom_from_label_map
    bias_field_hu: tuple[float, float] = (0.0, 30.0)  # amplitude of the smooth additive bias field

