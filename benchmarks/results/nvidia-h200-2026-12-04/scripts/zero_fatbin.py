"""Zero the payload of every cubin in a shared library's .nv_fatbin that is not for KEEP_SM,
keeping every header, so the file keeps its layout and the driver still finds its sm_90
entries; the zeros compress to nothing, so the library travels in one device call."""
import struct, subprocess, sys
KEEP_SM = {90}
src, dst = sys.argv[1], sys.argv[2]
data = bytearray(open(src, 'rb').read())
line = [l for l in subprocess.run(['readelf', '-S', '-W', src], capture_output=True, text=True).stdout.splitlines() if '.nv_fatbin' in l][0]
parts = line.split(']')[1].split()
off, size = int(parts[3], 16), int(parts[4], 16)
pos, end, zeroed, kept = off, off + size, 0, 0
while pos < end:
    magic, ver, hsz, fsz = struct.unpack_from('<IHHQ', data, pos)
    if magic != 0xBA55ED50:
        pos += 8
        continue
    p, bend = pos + hsz, pos + hsz + fsz
    while p < bend:
        kind, ev, ehs, padded = struct.unpack_from('<HHII', data, p)
        sm = struct.unpack_from('<I', data, p + 28)[0]
        if kind == 2 and sm not in KEEP_SM:
            data[p + ehs:p + ehs + padded] = bytes(padded); zeroed += padded
        else:
            kept += padded
        p += ehs + padded
    pos = bend
open(dst, 'wb').write(data)
print('zeroed', zeroed, 'kept', kept)
