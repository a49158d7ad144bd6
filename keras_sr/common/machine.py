"""What machine a measurement ran on: CPU model, core count and the ISA flags that set its speed.

Speed differs 5-9x between CPUs of the same family (AVX-512 vs AVX2-only), so every speed or
wall-time figure the project reports names the machine (dependency-free: reads /proc/cpuinfo).
"""
import os
import platform

# ISA flags that change TensorFlow / XNNPACK kernel speed, in the order they are reported.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "asimd",
               "asimddp", "i8mm")


def machine_info(cpuinfo="/proc/cpuinfo"):
    """Returns {"cpu": model name, "cores": logical cores, "isa": [speed flags], "text": one line}.

    Args:
        cpuinfo: the file to read (Linux); elsewhere the platform's processor name is used.
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and value.strip():
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    isa = [flag for flag in SPEED_FLAGS if flag in flags]
    cores = os.cpu_count() or 1
    return {"cpu": model, "cores": cores, "isa": isa,
            "text": f"{model}, {cores} cores, {' '.join(isa).upper() or 'no SIMD flags read'}"}
