#!/bin/bash
# bench/gpu/bundle.sh: our image decoder (Sources/CImageCodec) and the Debian static libraries it
# needs (libjpeg-turbo, libpng, libwebp, zlib) as one static archive, for machines without the
# -dev packages (the GPU box). bench/gpu/run.sh links it into its harness (non-PIE).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=bench/gpu/bundle
mkdir -p "$OUT/obj"
for f in Sources/CImageCodec/*.c; do
    gcc -O2 -ISources/CImageCodec/include -c "$f" -o "$OUT/obj/$(basename "$f" .c).o"
done
L=/usr/lib/x86_64-linux-gnu
rm -f "$OUT/ew_image_bundle.a"
{
    echo "CREATE $OUT/ew_image_bundle.a"
    for lib in libturbojpeg.a libpng16.a libwebp.a libz.a; do echo "ADDLIB $L/$lib"; done
    for o in "$OUT"/obj/*.o; do echo "ADDMOD $o"; done
    echo SAVE
    echo END
} | ar -M
rm -rf "$OUT/obj"
echo "bench/gpu/bundle.sh: $(du -h "$OUT/ew_image_bundle.a" | cut -f1) $OUT/ew_image_bundle.a"
