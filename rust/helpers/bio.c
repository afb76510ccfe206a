// SPDX-License-Identifier: GPL-2.0

#include <linux/bio.h>
#include <linux/blkdev.h>

void rust_helper_bio_set_dev(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
}

void rust_helper_bio_io_error(struct bio *bio)
{
	bio_io_error(bio);
}

bool rust_helper_bio_has_data(struct bio *bio)
{
	return bio_has_data(bio);
}

void rust_helper_zero_fill_bio(struct bio *bio)
{
	zero_fill_bio(bio);
}

void rust_helper_bio_advance(struct bio *bio, unsigned int nbytes)
{
	bio_advance(bio, nbytes);
}

void rust_helper_bio_list_init(struct bio_list *bl)
{
	bio_list_init(bl);
}

int rust_helper_bio_list_empty(const struct bio_list *bl)
{
	return bio_list_empty(bl);
}

unsigned int rust_helper_bio_list_size(const struct bio_list *bl)
{
	return bio_list_size(bl);
}

void rust_helper_bio_list_add(struct bio_list *bl, struct bio *bio)
{
	bio_list_add(bl, bio);
}

void rust_helper_bio_list_add_head(struct bio_list *bl, struct bio *bio)
{
	bio_list_add_head(bl, bio);
}

void rust_helper_bio_list_merge_init(struct bio_list *bl, struct bio_list *bl2)
{
	bio_list_merge_init(bl, bl2);
}

struct bio *rust_helper_bio_list_pop(struct bio_list *bl)
{
	return bio_list_pop(bl);
}

sector_t rust_helper_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

unsigned int rust_helper_bdev_logical_block_size(struct block_device *bdev)
{
	return bdev_logical_block_size(bdev);
}

unsigned int rust_helper_bdev_physical_block_size(struct block_device *bdev)
{
	return bdev_physical_block_size(bdev);
}
